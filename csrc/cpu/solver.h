// The Gram-space CAME-Grad solver on raw double arrays: a line-by-line port of
// camegrad_kernels/solver.py (read that file for the reasoning behind each step).
//
// Header-only and free of torch types, allocation and the standard library
// beyond <cmath>, so the CUDA backend can run the very same code on the device
// (every function is __host__ __device__ under nvcc). Callers pass one scratch
// buffer of workspace_size(n) doubles. Matrices are dense row-major n x n.
#pragma once

#include <cfloat>
#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CAMEGRAD_HD __host__ __device__ inline
#else
#define CAMEGRAD_HD inline
#endif

namespace camegrad {
namespace solver {

// Stage bit flags and fixed work, as in solver.py.
constexpr int RECTIFY = 1, RESCALE = 2, FUSE = 4;
constexpr int DUAL_ITERS = 128;
constexpr int POLISH_EVERY = 8;
constexpr int POWER_ITERS = 16;
constexpr double TINY = DBL_MIN;  // torch.finfo(float64).tiny
// gamma = max(SMOOTHING_DATA eps(Gram), SMOOTHING_WORK eps(double)): solver.smoothing.
constexpr double SMOOTHING_DATA = 16.0;
constexpr double SMOOTHING_WORK = 1e5;
constexpr double PRECOND_FLOOR = 1e-30;  // floor of the scaled diagonal: PG metric, face solve

struct Params {
  double rho, kappa, nu, eps;
  int stages;
  double gram_eps;  // machine epsilon of the Gram's dtype (solver.py's out_dtype)
};

// Scratch doubles needed by camegrad_coefficients for n tasks.
CAMEGRAD_HD long workspace_size(long n) { return 4 * n * n + 20 * n; }

// torch.clamp_min / clamp semantics: a NaN input stays NaN.
CAMEGRAD_HD double clamp_min(double x, double lo) { return x < lo ? lo : x; }
CAMEGRAD_HD double clamp(double x, double lo, double hi) {
  x = clamp_min(x, lo);
  return x > hi ? hi : x;
}

// solver.smoothing: the relative weight gamma of the smoothing term of the dual.
CAMEGRAD_HD double smoothing(double gram_eps) {
  return std::fmax(SMOOTHING_DATA * gram_eps, SMOOTHING_WORK * DBL_EPSILON);
}

CAMEGRAD_HD double dot(const double* a, const double* b, int n) {
  double acc = 0.0;
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y = M x (y must not alias x).
CAMEGRAD_HD void matvec(const double* M, const double* x, double* y, int n) {
  for (int i = 0; i < n; ++i) y[i] = dot(M + (long)i * n, x, n);
}

// max over the diagonal; NaN propagates like torch's max().
CAMEGRAD_HD double diag_max(const double* M, int n) {
  double m = M[0];
  for (int i = 1; i < n; ++i) {
    const double v = M[(long)i * n + i];
    if (v > m || std::isnan(v)) m = std::isnan(m) ? m : v;
  }
  return m;
}

// sqrt(x^T M x) with the clamp solver.py uses; Mx receives M x.
CAMEGRAD_HD double quad_norm(const double* M, const double* x, double* Mx, int n) {
  matvec(M, x, Mx, n);
  return std::sqrt(clamp_min(dot(x, Mx, n), 0.0));
}

// Projection onto the unit simplex in the norm sum_i w_i x_i^2 (solver.project_simplex):
// x_i = max(0, v_i - theta / w_i), the breakpoints t_i = w_i v_i sorted in decreasing
// order. sorted: 3n scratch.
CAMEGRAD_HD void project_simplex(const double* v, const double* w, double* out, double* sorted, int n) {
  double* t = sorted;
  double* vs = t + n;
  double* iw = vs + n;
  for (int i = 0; i < n; ++i) {  // insertion sort, descending in t (n is small)
    const double x = w[i] * v[i];
    int j = i;
    for (; j > 0 && t[j - 1] < x; --j) {
      t[j] = t[j - 1];
      vs[j] = vs[j - 1];
      iw[j] = iw[j - 1];
    }
    t[j] = x;
    vs[j] = v[i];
    iw[j] = 1.0 / w[i];
  }
  // count = how many k satisfy t_k - theta_k > 0, as torch sums the mask.
  int count = 0;
  double cv = 0.0, ciw = 0.0;
  for (int k = 0; k < n; ++k) {
    cv += vs[k];
    ciw += iw[k];
    if (t[k] - (cv - 1.0) / ciw > 0) ++count;
  }
  if (count < 1) count = 1;
  cv = ciw = 0.0;
  for (int k = 0; k < count; ++k) {
    cv += vs[k];
    ciw += iw[k];
  }
  const double theta = (cv - 1.0) / ciw;
  for (int i = 0; i < n; ++i) out[i] = clamp_min(v[i] - theta * (1.0 / w[i]), 0.0);
}

// phi(t) = beta t + s sqrt(p + 2 q t + m t^2), the dual objective along a segment.
CAMEGRAD_HD double segment_phi(double beta, double p, double q, double m, double s, double t) {
  return beta * t + s * std::sqrt(clamp_min(p + 2.0 * q * t + m * t * t, 0.0));
}

// argmin over t in [0, 1] of phi (convex; closed-form stationary point). The
// candidates {0, t*, 1} are compared, so the step never increases phi.
CAMEGRAD_HD double segment_step(double beta, double p, double q, double m, double s) {
  const double denom = s * s * m - beta * beta;
  const double delta = clamp_min(p * m - q * q, 0.0);
  const double y = -beta * std::sqrt(delta / clamp_min(denom, TINY));
  double t_star = (denom > 0 && m > 0) ? (y - q) / clamp_min(m, TINY) : 1.0;
  t_star = clamp(t_star, 0.0, 1.0);
  double t_best = 0.0, phi_best = segment_phi(beta, p, q, m, s, 0.0);
  const double candidates[2] = {t_star, 1.0};
  for (int c = 0; c < 2; ++c) {
    const double val = segment_phi(beta, p, q, m, s, candidates[c]);
    if (val < phi_best) {
      t_best = candidates[c];
      phi_best = val;
    }
  }
  return t_best;
}

// lambda_max(A) estimate from POWER_ITERS power iterations. v, Av: n scratch.
CAMEGRAD_HD double power_lambda_max(const double* A, double* v, double* Av, int n) {
  for (int i = 0; i < n; ++i) v[i] = i + 1.0;  // a ramp: A = P M P kills the ones
  for (int it = 0; it < POWER_ITERS; ++it) {
    matvec(A, v, Av, n);
    const double norm = clamp_min(std::sqrt(dot(Av, Av, n)), TINY);
    for (int i = 0; i < n; ++i) v[i] = Av[i] / norm;
  }
  matvec(A, v, Av, n);
  return clamp_min(dot(v, Av, n), TINY);
}

// Exact dual optimum on the face {i : z_i > 0} (docs/camegrad.md §2b), written to
// alpha. The ridged system M_S + ridge I is solved by Gaussian elimination with
// partial pivoting (what torch.linalg.solve_ex's LU does); a zero or non-finite
// pivot invalidates the candidate like LAPACK's inf/NaN result does in solver.py.
// work: n*n + 3n scratch.
CAMEGRAD_HD void face_solve(const double* M, const double* b, double s, const double* z, double* alpha,
                            double* work, int n) {
  double* A = work;  // compacted k x k system, k = |support|
  double* p = work + (long)n * n;
  double* q = p + n;
  double* inv = q + n;  // Jacobi scaling, compacted: 1 / sqrt(M_ii) on the support
  const double ridge = 8.0 * n * DBL_EPSILON;
  int k = 0;
  for (int i = 0; i < n; ++i)
    if (z[i] > 0) inv[k++] = 1.0 / std::sqrt(clamp_min(M[(long)i * n + i], PRECOND_FLOOR));
  // The system in the scaled basis (unit diagonal), so that tasks whose norms
  // differ by orders of magnitude are treated alike; the ridge guards
  // rank-deficient faces (collinear tasks, n > d). M is scaled to max diag 1
  // here; the floor keeps a zero gradient's row finite.
  k = 0;
  for (int i = 0; i < n; ++i) {
    if (!(z[i] > 0)) continue;
    int c = 0;
    for (int j = 0; j < n; ++j)
      if (z[j] > 0) {
        A[(long)k * n + c] = M[(long)i * n + j] * inv[k] * inv[c] + (i == j ? ridge : 0.0);
        ++c;
      }
    p[k] = inv[k];  // right-hand sides: 1_S and b_S, scaled
    q[k] = b[i] * inv[k];
    ++k;
  }
  bool solved = true;
  for (int c = 0; c < k && solved; ++c) {
    int piv = c;  // first row of largest magnitude, as LAPACK's idamax
    for (int r = c + 1; r < k; ++r)
      if (std::fabs(A[(long)r * n + c]) > std::fabs(A[(long)piv * n + c])) piv = r;
    const double pv = A[(long)piv * n + c];
    if (pv == 0.0 || !std::isfinite(pv)) {
      solved = false;
      break;
    }
    if (piv != c) {
      for (int j = c; j < k; ++j) {
        const double t = A[(long)c * n + j];
        A[(long)c * n + j] = A[(long)piv * n + j];
        A[(long)piv * n + j] = t;
      }
      double t = p[c];
      p[c] = p[piv];
      p[piv] = t;
      t = q[c];
      q[c] = q[piv];
      q[piv] = t;
    }
    for (int r = c + 1; r < k; ++r) {
      const double f = A[(long)r * n + c] / pv;
      for (int j = c + 1; j < k; ++j) A[(long)r * n + j] -= f * A[(long)c * n + j];
      p[r] -= f * p[c];
      q[r] -= f * q[c];
    }
  }
  for (int r = k - 1; r >= 0 && solved; --r) {
    double sp = p[r], sq = q[r];
    for (int j = r + 1; j < k; ++j) {
      sp -= A[(long)r * n + j] * p[j];
      sq -= A[(long)r * n + j] * q[j];
    }
    p[r] = sp / A[(long)r * n + r];
    q[r] = sq / A[(long)r * n + r];
  }
  for (int r = 0; r < k && solved; ++r) {  // back from the scaled basis
    p[r] *= inv[r];
    q[r] *= inv[r];
  }
  // A = 1^T p, B = 1^T q, C = b_S^T q (compacted entries are in support order).
  double Asum = 0.0, Bsum = 0.0, Csum = 0.0;
  for (int i = 0, c = 0; i < n && solved; ++i) {
    if (!(z[i] > 0)) continue;
    Asum += p[c];
    Bsum += q[c];
    Csum += b[i] * q[c];
    ++c;
  }
  const double D = Bsum * Bsum - Asum * (Csum - s * s);
  const double sqrt_d = std::sqrt(clamp_min(D, TINY));
  const double lam = (Bsum + sqrt_d) / clamp_min(Asum, TINY);
  double total = 0.0;
  for (int i = 0, c = 0; i < n; ++i) {
    alpha[i] = 0.0;
    if (!(z[i] > 0) || !solved) continue;
    alpha[i] = clamp_min((lam * p[c] - q[c]) / sqrt_d, 0.0);
    total += alpha[i];
    ++c;
  }
  const bool ok = solved && D > 0 && Asum > 0 && total > 0 && std::isfinite(total);
  // Fallback: uniform on the support (all zeros for an empty support).
  const double denom = ok ? clamp_min(total, TINY) : clamp_min((double)k, 1.0);
  for (int i = 0; i < n; ++i) alpha[i] = (ok ? alpha[i] : (z[i] > 0 ? 1.0 : 0.0)) / denom;
}

// F(alpha) = alpha^T b + s sqrt(alpha^T M alpha). tmp: n scratch.
CAMEGRAD_HD double objective(const double* M, const double* b, double s, const double* alpha, double* tmp,
                             int n) {
  return dot(alpha, b, n) + s * quad_norm(M, alpha, tmp, n);
}

// solver.rectify_scale: s / sqrt(alpha^T M alpha), 0 when the root is 0. Ma: n scratch.
CAMEGRAD_HD double rectify_scale(const double* M, double s, const double* alpha, double* Ma, int n) {
  const double r = quad_norm(M, alpha, Ma, n);
  return r > 0 ? s / clamp_min(r, TINY) : 0.0;
}

// Normalised duality gap of alpha and the primal point a_mu + k alpha (solver.duality_gap).
// Ma: n scratch.
CAMEGRAD_HD double duality_gap(const double* M, const double* b, double s, const double* alpha, double k,
                               double* Ma, int n) {
  const double r = quad_norm(M, alpha, Ma, n);
  const double max_norm = std::sqrt(clamp_min(diag_max(M, n), 0.0));
  double primal = b[0] + k * Ma[0], bsum = b[0];
  // Every vertex e_i is a dual point too: F(e_i) = b_i + s ||g_i||.
  double vertex = b[0] + s * std::sqrt(clamp_min(M[0], 0.0));
  for (int i = 1; i < n; ++i) {
    const double v = b[i] + k * Ma[i];
    if (v < primal || std::isnan(v)) primal = std::isnan(primal) ? primal : v;
    const double f = b[i] + s * std::sqrt(clamp_min(M[(long)i * n + i], 0.0));
    if (f < vertex || std::isnan(f)) vertex = std::isnan(vertex) ? vertex : f;
    bsum += b[i];
  }
  const double f_alpha = dot(alpha, b, n) + s * r;
  // torch.minimum: NaN if either is NaN.
  const double dual = std::isnan(f_alpha) || std::isnan(vertex) ? NAN : std::fmin(f_alpha, vertex);
  const double mu_norm = std::sqrt(clamp_min(bsum / n, 0.0));
  // ||mu|| is known only down to sqrt(eps) max_i ||g_i||: the normaliser is floored there.
  const double denom = std::fmax(mu_norm, std::sqrt(DBL_EPSILON) * max_norm) * max_norm;
  return (dual - primal) / clamp_min(denom, TINY);
}

// alpha* = argmin over the simplex of alpha^T b + s sqrt(alpha^T M alpha); the
// algorithm of solver.solve_dual. work: 2n^2 + 17n scratch.
CAMEGRAD_HD void solve_dual(const double* M, const double* b, double s, double* out, double* work, int n) {
  const long nn = (long)n * n;
  double* Mh = work;
  double* scratch = Mh + nn;  // n*n + 3n: the centred matrix, then face solves
  double* bh = scratch + nn + 3 * n;
  double* alpha = bh + n;
  double* Ma = alpha + n;
  double* grad = Ma + n;
  double* z = grad + n;
  double* d = z + n;
  double* Md = d + n;
  double* face = Md + n;
  double* tmp = face + n;
  double* tmp2 = tmp + n;
  double* wd = tmp2 + n;      // the diagonal metric of the projected gradient
  double* sorted = wd + n;    // 3n: the projection's sort

  // 1. Scale free: M / max(diag M).
  const double scale = clamp_min(diag_max(M, n), TINY);
  for (long i = 0; i < nn; ++i) Mh[i] = M[i] / scale;
  for (int i = 0; i < n; ++i) bh[i] = b[i] / scale;
  const double sh = s / std::sqrt(scale);
  // Curvature along the simplex: lambda_max(P Mh P), P = I - 11^T/n, formed by
  // centring the columns then the rows (the same matrix as the two products).
  for (int j = 0; j < n; ++j) {
    double mean = 0.0;
    for (int i = 0; i < n; ++i) mean += Mh[(long)i * n + j];
    mean /= n;
    for (int i = 0; i < n; ++i) scratch[(long)i * n + j] = Mh[(long)i * n + j] - mean;
  }
  for (int i = 0; i < n; ++i) {
    double mean = 0.0;
    for (int j = 0; j < n; ++j) mean += scratch[(long)i * n + j];
    mean /= n;
    for (int j = 0; j < n; ++j) scratch[(long)i * n + j] -= mean;
  }
  const double lam = power_lambda_max(scratch, tmp, tmp2, n);

  // 2. Projected gradient with exact segment search and Barzilai-Borwein steps.
  for (int i = 0; i < n; ++i) alpha[i] = z[i] = 1.0 / n;
  double r = clamp_min(quad_norm(Mh, alpha, Ma, n), TINY);
  for (int i = 0; i < n; ++i) grad[i] = bh[i] + sh * Ma[i] / r;
  // Diagonal (Jacobi) metric: steps and projection in the norm sum_i wd_i x_i^2.
  for (int i = 0; i < n; ++i) wd[i] = clamp_min(Mh[(long)i * n + i], PRECOND_FLOOR);
  double eta = r / (sh * lam + 1e-6 * r);
  for (int it = 0; it < DUAL_ITERS; ++it) {
    if (it % POLISH_EVERY == POLISH_EVERY - 1) {
      // Jump to the exact optimum of the face the projection points at, if better.
      face_solve(Mh, bh, sh, z, face, scratch, n);
      if (objective(Mh, bh, sh, face, tmp, n) < objective(Mh, bh, sh, alpha, tmp, n))
        for (int i = 0; i < n; ++i) alpha[i] = face[i];
      r = clamp_min(quad_norm(Mh, alpha, Ma, n), TINY);
      for (int i = 0; i < n; ++i) grad[i] = bh[i] + sh * Ma[i] / r;
    }
    for (int i = 0; i < n; ++i) tmp2[i] = alpha[i] - eta * grad[i] / wd[i];
    project_simplex(tmp2, wd, z, sorted, n);
    for (int i = 0; i < n; ++i) d[i] = z[i] - alpha[i];
    matvec(Mh, d, Md, n);
    const double t = segment_step(dot(d, bh, n), r * r, dot(Ma, d, n), dot(d, Md, n), sh);
    for (int i = 0; i < n; ++i) alpha[i] += t * d[i];
    r = clamp_min(quad_norm(Mh, alpha, Ma, n), TINY);
    double ss = 0.0, curv = 0.0;  // step = t d, dgrad = grad_new - grad
    for (int i = 0; i < n; ++i) {
      const double g_new = bh[i] + sh * Ma[i] / r;
      const double step = t * d[i];
      ss += step * (wd[i] * step);
      curv += step * (g_new - grad[i]);
      grad[i] = g_new;
    }
    eta = clamp(curv > TINY ? ss / clamp_min(curv, TINY) : eta, 1e-10, 1e10);
  }

  // 3-4. Exact solve on the last projected face; keep the smaller duality gap.
  face_solve(Mh, bh, sh, z, face, scratch, n);
  const double gap_face = duality_gap(Mh, bh, sh, face, rectify_scale(Mh, sh, face, tmp, n), tmp, n);
  const double k_alpha = rectify_scale(Mh, sh, alpha, tmp, n);
  const bool better = gap_face < duality_gap(Mh, bh, sh, alpha, k_alpha, tmp, n);
  // Long steps leave 1^T alpha off by ~|alpha - eta grad| eps: back onto the simplex.
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += out[i] = better ? face[i] : alpha[i];
  for (int i = 0; i < n; ++i) out[i] /= clamp_min(total, TINY);
}

// solver.camegrad_coefficients: alpha [n], coeffs [n], gap, skipped from the
// Gram matrix M and weights w. work: workspace_size(n) doubles.
CAMEGRAD_HD void camegrad_coefficients(const double* M_in, const double* w, int n, const Params& prm,
                                       double* alpha, double* coeffs, double* gap, bool* skipped,
                                       double* work) {
  const long nn = (long)n * n;
  double* M = work;
  double* b = M + nn;
  double* Ma = b + n;
  double* a_u = Ma + n;
  double* Ms = a_u + n;           // n^2: the smoothed Gram
  double* dual_work = Ms + nn;  // 2n^2 + 13n
  bool finite = true;
  for (long i = 0; i < nn; ++i) finite = finite && std::isfinite(M_in[i]);
  for (long i = 0; i < nn; ++i) M[i] = finite ? M_in[i] : 0.0;
  const double a_mu = 1.0 / n;
  for (int i = 0; i < n; ++i) {
    double acc = 0.0;
    for (int j = 0; j < n; ++j) acc += M[(long)i * n + j] * a_mu;
    b[i] = acc;
  }
  double b_sum = 0.0;
  for (int i = 0; i < n; ++i) b_sum += a_mu * b[i];
  const double s = prm.rho * std::sqrt(clamp_min(b_sum, 0.0));

  double gap_value = NAN;
  if (prm.stages & RECTIFY) {
    // solver.rectify: the dual on the smoothed Gram M + gamma n n^T, b and s
    // those of M, with each zero gradient's row replaced by the largest task's
    // (its weight handed back to that task after the solve).
    const double gamma = smoothing(prm.gram_eps);
    int top = 0;  // the first index of the largest diagonal entry, as torch.argmax
    for (int i = 1; i < n; ++i)
      if (M[(long)i * n + i] > M[(long)top * n + top]) top = i;
    auto idx = [&](int i) { return M[(long)i * n + i] > 0 ? i : top; };
    for (int i = 0; i < n; ++i) {
      Ma[i] = std::sqrt(clamp_min(M[(long)idx(i) * n + idx(i)], 0.0));
      a_u[i] = b[idx(i)];  // a_u holds the remapped b until Stage 1 fills it
    }
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        Ms[(long)i * n + j] = M[(long)idx(i) * n + idx(j)] + gamma * (Ma[i] * Ma[j]);
    solve_dual(Ms, a_u, s, alpha, dual_work, n);
    const double k = rectify_scale(Ms, s, alpha, Ma, n);
    double moved = 0.0;
    for (int i = 0; i < n; ++i)
      if (!(M[(long)i * n + i] > 0)) {
        moved += alpha[i];
        alpha[i] = 0.0;
      }
    alpha[top] += moved;
    for (int i = 0; i < n; ++i) a_u[i] = a_mu + k * alpha[i];
    gap_value = duality_gap(M, b, s, alpha, k, Ma, n);
  } else {
    for (int i = 0; i < n; ++i) {
      alpha[i] = NAN;
      a_u[i] = w[i];
    }
  }

  double joint_scale = 1.0;  // the fused joint term is kappa*w with Stage 2, w without
  if (prm.stages & RESCALE) {
    const double tau = prm.kappa * quad_norm(M, w, Ma, n);
    const double denom = quad_norm(M, a_u, Ma, n) + prm.eps;
    const double factor = denom > 0.0 ? tau / denom : 0.0;  // u = 0, eps = 0: keep 0, not 0/0
    for (int i = 0; i < n; ++i) a_u[i] *= factor;
    joint_scale = prm.kappa;
  }
  const double fuse = (prm.stages & FUSE) ? prm.nu : 0.0;
  for (int i = 0; i < n; ++i) coeffs[i] = (1.0 - fuse) * a_u[i] + fuse * (joint_scale * w[i]);

  *skipped = !finite;
  *gap = finite ? gap_value : NAN;
  for (int i = 0; i < n; ++i) {
    coeffs[i] = finite ? coeffs[i] : 0.0;
    alpha[i] = finite ? alpha[i] : NAN;
  }
}

}  // namespace solver
}  // namespace camegrad
