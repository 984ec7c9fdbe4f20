// The baselines of camegrad_kernels/methods/ (CAGrad, MGDA, PCGrad) on raw
// double arrays: a line-by-line port of that file (read it for the maths and
// the conventions), built on the CAME-Grad solver of solver.h.
//
// Like solver.h: header-only, no torch, no allocation (callers pass scratch),
// matrices dense row-major n x n. Each function writes alpha [n], coeffs [n],
// the gap and the skipped flag exactly as solver::camegrad_coefficients does:
// a non-finite Gram gives skipped, coeffs 0, alpha and gap NaN.
#pragma once

#include <cstdint>

#include "solver.h"

namespace camegrad {
namespace methods {

using solver::clamp_min;
using solver::TINY;

// Scratch doubles each function needs for n tasks.
CAMEGRAD_HD long workspace_size(long n) { return n * n + 2 * n + solver::workspace_size(n); }

// Mw = M w w^T (M replaced by zeros when it is not finite); returns finiteness.
CAMEGRAD_HD bool weighted_gram(const double* M, const double* w, double* Mw, int n) {
  const long nn = (long)n * n;
  bool finite = true;
  for (long e = 0; e < nn; ++e) finite = finite && std::isfinite(M[e]);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) Mw[(long)i * n + j] = finite ? M[(long)i * n + j] * w[i] * w[j] : 0.0;
  return finite;
}

// The common ending: a non-finite Gram zeroes coeffs and NaNs alpha and the gap.
CAMEGRAD_HD void finish(bool finite, double* alpha, double* coeffs, double* gap, bool* skipped, int n) {
  *skipped = !finite;
  if (finite) return;
  *gap = NAN;
  for (int i = 0; i < n; ++i) alpha[i] = NAN, coeffs[i] = 0.0;
}

// CAGrad: CAME-Grad's Stage 1 on the weighted Gram, divided by the public
// code's rescale factor (0: 1, 1: 1 + rho^2, 2: 1 + rho).
CAMEGRAD_HD void cagrad_coefficients(const double* M, const double* w, int n, double rho, int rescale,
                                     double gram_eps, double* alpha, double* coeffs, double* gap,
                                     bool* skipped, double* work) {
  double* Mw = work;
  double* ones = Mw + (long)n * n;
  const bool finite = weighted_gram(M, w, Mw, n);
  for (int i = 0; i < n; ++i) ones[i] = 1.0;
  const solver::Params prm{rho, 1.0, 0.0, 0.0, solver::RECTIFY, gram_eps};
  solver::camegrad_coefficients(Mw, ones, n, prm, alpha, coeffs, gap, skipped, ones + n);
  const double factor = rescale == 1 ? 1.0 + rho * rho : rescale == 2 ? 1.0 + rho : 1.0;
  for (int i = 0; i < n; ++i) coeffs[i] = w[i] * coeffs[i] / factor;
  finish(finite, alpha, coeffs, gap, skipped, n);
}

// MGDA: the min-norm point of the convex hull of the (optionally l2-normalised)
// weighted gradients, as solve_dual with b = 0.
CAMEGRAD_HD void mgda_coefficients(const double* M, const double* w, int n, bool l2, double* alpha,
                                   double* coeffs, double* gap, bool* skipped, double* work) {
  const long nn = (long)n * n;
  double* Mn = work;
  double* inv = Mn + nn;
  double* zeros = inv + n;
  double* dual_work = zeros + n;  // 2n^2 + 17n, then Mn alpha
  const bool finite = weighted_gram(M, w, Mn, n);
  for (int i = 0; i < n; ++i) {
    const double norm = std::sqrt(clamp_min(Mn[(long)i * n + i], 0.0));
    inv[i] = !l2 ? 1.0 : norm > 0 ? 1.0 / clamp_min(norm, TINY) : 0.0;
    zeros[i] = 0.0;
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) Mn[(long)i * n + j] *= inv[i] * inv[j];
  // Any s > 0 has the same argmin; sqrt(max_i M_ii) keeps the problem O(1).
  const double scale = clamp_min(solver::diag_max(Mn, n), TINY);
  solver::solve_dual(Mn, zeros, std::sqrt(scale), alpha, dual_work, n);
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += alpha[i] = clamp_min(alpha[i], 0.0);
  // Back onto the simplex (projected-gradient iterates drift ~1e-10 on singular Grams).
  const bool ok = total > 0 && std::isfinite(total);
  for (int i = 0; i < n; ++i) alpha[i] = ok ? alpha[i] / clamp_min(total, TINY) : 1.0 / n;
  double* Ma = dual_work;
  solver::matvec(Mn, alpha, Ma, n);
  double min_ma = Ma[0];
  for (int i = 1; i < n; ++i)
    if (Ma[i] < min_ma || std::isnan(Ma[i])) min_ma = std::isnan(min_ma) ? min_ma : Ma[i];
  // The Frank-Wolfe gap: 0 exactly at the min-norm point.
  *gap = clamp_min((solver::dot(alpha, Ma, n) - min_ma) / scale, 0.0);
  for (int i = 0; i < n; ++i) coeffs[i] = w[i] * inv[i] * alpha[i];
  *skipped = false;
  finish(finite, alpha, coeffs, gap, skipped, n);
}

// PCGrad: each task's gradient projected, in its own order, off the tasks it
// conflicts with. A row i holds the coefficients of g_i' (it only reads and
// writes itself, so the rows run one after the other). order: n x n task
// indices; an entry outside [0, n) or equal to its row is skipped.
CAMEGRAD_HD void pcgrad_coefficients(const double* M, const double* w, const int64_t* order, int n, bool mean,
                                     double* alpha, double* coeffs, double* gap, bool* skipped,
                                     double* work) {
  double* Mw = work;
  double* a = Mw + (long)n * n;  // the current row of A
  const bool finite = weighted_gram(M, w, Mw, n);
  for (int j = 0; j < n; ++j) coeffs[j] = 0.0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) a[j] = i == j ? 1.0 : 0.0;
    for (int k = 0; k < n; ++k) {
      const int64_t j = order[(long)i * n + k];
      if (j < 0 || j >= n || j == i) continue;
      double dot = 0.0;  // <g_i', g_j>
      for (int l = 0; l < n; ++l) dot += a[l] * Mw[(long)l * n + j];
      const double sq = Mw[j * n + j];
      if (dot < 0 && sq > 0) a[j] -= dot / clamp_min(sq, TINY);
    }
    for (int j = 0; j < n; ++j) coeffs[j] += a[j];
  }
  for (int j = 0; j < n; ++j) {
    coeffs[j] = w[j] * (mean ? coeffs[j] / n : coeffs[j]);
    alpha[j] = NAN;
  }
  *gap = NAN;
  *skipped = false;
  finish(finite, alpha, coeffs, gap, skipped, n);
}

}  // namespace methods
}  // namespace camegrad
