// The solve (docs/camegrad.md §3): solver.camegrad_coefficients in double, step for
// step, by one thread block. Thread i owns task i, i.e. entry i of every
// n-vector; vectors that all threads read (matvec operands, the sort) pass
// through shared memory, and every reduction gives all threads the same bits,
// so all data-dependent decisions are uniform. The work is fixed (the loop
// counts of solver.py), the only host-side work is the launch.
//
// The same kernel runs two baselines of camegrad_kernels/methods/ on the
// weighted Gram Mw = M w w^T: CAGrad (CAME-Grad's Stage 1 with weights 1) and
// MGDA (the dual with b = 0: the min-norm point of the convex hull).
//
// Shared memory holds Mh = M / max(diag M) and a second n x n work matrix: M
// itself (CAME-Grad, CAGrad: then the smoothed Ms = M + gamma nrm nrm^T, zero
// gradients remapped as in solver.rectify, that the dual is solved on), then
// P Mh P for the power iteration, then each face system.
// The scalar steps (segment line search, clamps, constants) are those of the
// CPU port in csrc/cpu/solver.h, which are __host__ __device__.
#include <cfloat>
#include <cmath>

#include "block_solver.cuh"
#include "camegrad_cuda.cuh"
#include "solver.h"

namespace camegrad {
namespace cuda {
namespace {

namespace sv = camegrad::solver;
using sv::clamp_min;
using sv::TINY;
using namespace block;

// torch's min: NaN if either is NaN (fmin would drop it).
struct MinNaN {
  __device__ double operator()(double a, double b) const { return isnan(a) ? a : isnan(b) ? b : fmin(a, b); }
};

// Row stride of the two shared matrices: odd, so that thread i's row i falls on
// its own banks; n + 2 columns hold a face system with its two right-hand sides.
__host__ __device__ inline int row_stride(int n) { return (n + 2) | 1; }

// Shared memory: mh, wk [n x ld], xs, us, cs, bs [threads], red [2 W 4] (doubles), orig [threads] (ints).
template <int W>
__host__ __device__ inline size_t shared_bytes(int n) {
  constexpr int threads = 32 * W;
  return (2 * size_t(n) * row_stride(n) + 4 * threads + 2 * W * 4) * sizeof(double) + threads * sizeof(int);
}

template <int W>
struct Solver {
  Team<W> team;
  const int n, ld, tid;
  const bool act;
  double *mh, *wk;            // n x ld each
  // [kThreads] each: operands; the sorted v of project() (face_solve: the scaling); the
  // sorted 1 / w, then theta_k, of project(); bh.
  double *xs, *us, *cs, *bs;
  int* orig;                  // compact face index -> task

  __device__ Solver(double* smem, int n_)
      : team(n_, smem + 2 * n_ * row_stride(n_) + 4 * Team<W>::kThreads),
        n(n_),
        ld(row_stride(n_)),
        tid(threadIdx.x),
        act(int(threadIdx.x) < n_) {
    mh = smem;
    wk = mh + n * ld;
    xs = wk + n * ld;
    us = xs + Team<W>::kThreads;
    cs = us + Team<W>::kThreads;
    bs = cs + Team<W>::kThreads;
    orig = reinterpret_cast<int*>(team.red + 2 * W * 4);
  }

  __device__ void sync() const { team.sync(); }

  // (A x)_i for the calling thread's i (0 beyond n); x_i from every thread.
  __device__ double matvec(const double* A, double x) {
    sync();  // earlier readers of xs are done
    xs[tid] = x;
    sync();
    double y = 0.0;
    if (act)
      for (int j = 0; j < n; ++j) y += A[tid * ld + j] * xs[j];
    return y;
  }

  // wk_ij = (wk_ij x_i) x_j, rounded as torch's M * x[:, None] * x[None, :]; x_i
  // from every thread, each thread scales its own row.
  __device__ void scale(double x) {
    sync();  // wk is written, earlier readers of xs are done
    xs[tid] = x;
    sync();
    if (act)
      for (int j = 0; j < n; ++j) wk[tid * ld + j] = wk[tid * ld + j] * x * xs[j];
  }

  // solver.rectify's remapped Gram in place: wk_ij = wk_{idx(i) idx(j)} with idx(i) = top
  // for a zero gradient (zero = !(wk_ii > 0), the caller's), i otherwise. Through mh
  // (free until solve_dual fills it); orig holds idx (free outside face_solve).
  __device__ void remap(bool zero, int top) {
    sync();  // wk is written, earlier readers of orig are done
    if (act) orig[tid] = zero ? top : tid;
    sync();
    if (act)
      for (int j = 0; j < n; ++j) mh[tid * ld + j] = wk[orig[tid] * ld + orig[j]];
    sync();  // every read of wk is done
    if (act)
      for (int j = 0; j < n; ++j) wk[tid * ld + j] = mh[tid * ld + j];
  }

  // solver.smoothed_gram in place: wk_ij + gamma (nrm_i nrm_j), nrm_i = sqrt(max(wk_ii, 0)).
  __device__ void smooth(double gamma) {
    sync();  // wk is written, earlier readers of xs are done
    xs[tid] = act ? sqrt(clamp_min(wk[tid * ld + tid], 0.0)) : 0.0;
    sync();
    if (act)
      for (int j = 0; j < n; ++j) wk[tid * ld + j] = wk[tid * ld + j] + gamma * (xs[tid] * xs[j]);
  }

  // solver.project_simplex of v in the norm sum_i w_i x_i^2: descending sort of
  // the breakpoints t_i = w_i v_i by rank (ties by index), cumsums of v and 1 / w
  // in sorted order, theta_k = (cumsum v - 1) / cumsum 1/w, count of the
  // positive prefix t_k > theta_k, x_i = max(0, v_i - theta / w_i).
  __device__ double project(double v, double w) {
    const double t = w * v, iw = 1.0 / w;
    sync();
    xs[tid] = t;
    sync();
    int rank = 0;
    if (act) {
      for (int j = 0; j < n; ++j) rank += xs[j] > t || (xs[j] == t && j < tid);
      us[rank] = v;
      cs[rank] = iw;
    }
    sync();
    double cv = 0.0, ciw = 0.0;
    if (act)
      for (int j = 0; j <= tid; ++j) cv += us[j], ciw += cs[j];
    sync();  // the reads of the sorted 1 / w are done
    if (act) cs[tid] = (cv - 1.0) / ciw;  // theta_k, k = tid
    sync();
    const int count = max(team.count(act && t - cs[rank] > 0), 1);
    const double theta = cs[count - 1];
    return act ? clamp_min(v - theta * iw, 0.0) : 0.0;
  }

  // solver._face_solve on the support {i : in_support}: Gaussian elimination
  // with partial pivoting of the compacted system in the Jacobi-scaled basis,
  // Mh_ij inv_i inv_j + ridge on the diagonal (inv_i = 1 / sqrt(max(Mh_ii,
  // PRECOND_FLOOR)): Mh has max diag 1, the floor keeps a zero gradient finite), with
  // right-hand sides (inv, bh inv), the solutions scaled back by inv, then the
  // closed form of docs/camegrad.md §2b. A zero or non-finite pivot invalidates the
  // candidate (LAPACK's inf/NaN in solver.py).
  __device__ double face_solve(bool in_support, double bh, double sh) {
    int m;
    const int ci = team.prefix(in_support, m);
    // us[c] = inv of compact index c (us is free outside project()).
    if (in_support) orig[ci] = tid, us[ci] = 1.0 / sqrt(clamp_min(mh[tid * ld + tid], sv::PRECOND_FLOOR));
    sync();
    const double ridge = 8.0 * n * DBL_EPSILON;
    if (tid < m) {
      const int i = orig[tid];
      const double inv_r = us[tid];
      double* row = wk + tid * ld;
      for (int c = 0; c < m; ++c) row[c] = mh[i * ld + orig[c]] * inv_r * us[c] + (c == tid ? ridge : 0.0);
      row[m] = inv_r;
      row[m + 1] = bs[i] * inv_r;
    }
    sync();
    bool solved = true;
    for (int k = 0; k < m; ++k) {
      double mag = tid >= k && tid < m ? fabs(wk[tid * ld + k]) : -1.0;
      if (isnan(mag)) mag = INFINITY;  // keep the argmax uniform; the pivot check fails it
      const int p = team.argmax(mag, tid);
      if (p != k) {
        sync();  // the reads of column k above are done (argmax's shuffles do not order memory)
        for (int j = k + tid; j <= m + 1; j += Team<W>::kThreads) {
          const double t = wk[k * ld + j];
          wk[k * ld + j] = wk[p * ld + j];
          wk[p * ld + j] = t;
        }
        sync();
      }
      const double piv = wk[k * ld + k];
      solved = solved && piv != 0.0 && isfinite(piv);
      if (tid > k && tid < m) {
        double* row = wk + tid * ld;
        const double* prow = wk + k * ld;
        const double f = row[k] / piv;
        for (int j = k + 1; j <= m + 1; ++j) row[j] -= f * prow[j];
      }
      sync();
    }
    // Back substitution by columns, as LAPACK's trsm: x_k, then update rows < k.
    for (int k = m - 1; k >= 0; --k) {
      if (tid == k) {
        wk[k * ld + m] /= wk[k * ld + k];
        wk[k * ld + m + 1] /= wk[k * ld + k];
      }
      sync();
      if (tid < k) {
        wk[tid * ld + m] -= wk[tid * ld + k] * wk[k * ld + m];
        wk[tid * ld + m + 1] -= wk[tid * ld + k] * wk[k * ld + m + 1];
      }
    }
    sync();
    const double p = in_support ? wk[ci * ld + m] * us[ci] : 0.0;  // back from the scaled basis
    const double q = in_support ? wk[ci * ld + m + 1] * us[ci] : 0.0;
    double abc[3] = {p, q, in_support ? bh * q : 0.0};
    team.reduce(abc, Add{});
    const double A = abc[0], B = abc[1], C = abc[2];
    const double D = B * B - A * (C - sh * sh);
    const double sqrt_d = sqrt(clamp_min(D, TINY));
    const double lam = (B + sqrt_d) / clamp_min(A, TINY);
    const double alpha = in_support ? clamp_min((lam * p - q) / sqrt_d, 0.0) : 0.0;
    const double total = team.sum(alpha);
    const bool ok = solved && D > 0 && A > 0 && total > 0 && isfinite(total);
    return ok ? alpha / clamp_min(total, TINY) : (in_support ? 1.0 : 0.0) / clamp_min(double(m), 1.0);
  }

  // solver._objective: alpha^T b + s sqrt(alpha^T M alpha), on (Mh, bh, sh).
  __device__ double objective(double a, double bh, double sh) {
    const double Ma = matvec(mh, a);
    double v[2] = {a * bh, a * Ma};
    team.reduce(v, Add{});
    return v[0] + sh * sqrt(clamp_min(v[1], 0.0));
  }

  // sqrt(a^T A a) (solver.py's clamp, not clamped to TINY), and A a.
  __device__ double norm(const double* A, double a, double& Aa) {
    Aa = matvec(A, a);
    return sqrt(clamp_min(team.sum(a * Aa), 0.0));
  }

  // solver.rectify_scale from r' = norm(Ms, alpha): s / r', 0 when r' = 0.
  __device__ static double rectify_scale(double s, double r) { return r > 0 ? s / clamp_min(r, TINY) : 0.0; }

  // solver.duality_gap of alpha and the primal point a_mu + k alpha on (A, b, s),
  // from Ma = A alpha and r = norm(A, alpha); max_norm = sqrt(max diag A), diag =
  // A_ii of the calling thread's i.
  __device__ double gap(double Ma, double r, double max_norm, double diag, double b, double s, double a,
                        double k) {
    double v[2] = {a * b, b};
    team.reduce(v, Add{});
    // The primal value and the vertex bound: every vertex e_i is a dual point too,
    // F(e_i) = b_i + s ||g_i||.
    double mins[2] = {act ? b + k * Ma : INFINITY, act ? b + s * sqrt(clamp_min(diag, 0.0)) : INFINITY};
    team.reduce(mins, MinNaN{});
    const double f_alpha = v[0] + s * r;
    const double dual = isnan(f_alpha) || isnan(mins[1]) ? NAN : fmin(f_alpha, mins[1]);  // torch.minimum
    const double mu_norm = sqrt(clamp_min(v[1] / n, 0.0));
    // ||mu|| is known only down to sqrt(eps) max_i ||g_i||: the normaliser is floored there.
    const double denom = fmax(mu_norm, sqrt(DBL_EPSILON) * max_norm) * max_norm;
    return (dual - mins[0]) / clamp_min(denom, TINY);
  }

  // The gap of solve_dual's final choice: on (Mh, bh, sh), k = rectify_scale on Mh.
  __device__ double gap_h(double max_norm, double bh, double sh, double a) {
    double Ma;
    const double r = norm(mh, a, Ma);
    return gap(Ma, r, max_norm, act ? mh[tid * ld + tid] : 0.0, bh, sh, a, rectify_scale(sh, r));
  }

  // sqrt(alpha^T Mh alpha) clamped to TINY, and Mh alpha.
  __device__ double radius(double a, double& Ma) { return clamp_min(norm(mh, a, Ma), TINY); }

  // solver.solve_dual on wk = M (overwritten); b_i, s, max diag M.
  __device__ double solve_dual(double b, double s, double diag_max) {
    const double scale = clamp_min(diag_max, TINY);
    for (int e = tid; e < n * n; e += Team<W>::kThreads) {
      const int i = e / n, j = e - i * n;
      mh[i * ld + j] = wk[i * ld + j] / scale;
    }
    const double bh = act ? b / scale : 0.0;
    const double sh = s / sqrt(scale);
    bs[tid] = bh;
    sync();
    // P Mh P, P = I - 11^T/n: centre the columns, then the rows (as solver.h).
    if (act) {
      double mean = 0.0;
      for (int i = 0; i < n; ++i) mean += mh[i * ld + tid];
      mean /= n;
      for (int i = 0; i < n; ++i) wk[i * ld + tid] = mh[i * ld + tid] - mean;
    }
    sync();
    if (act) {
      double mean = 0.0;
      for (int j = 0; j < n; ++j) mean += wk[tid * ld + j];
      mean /= n;
      for (int j = 0; j < n; ++j) wk[tid * ld + j] -= mean;
    }
    // _power_lambda_max (matvec syncs before reading wk).
    double v = act ? tid + 1.0 : 0.0;  // a ramp: P M P kills the ones vector
    for (int it = 0; it < sv::POWER_ITERS; ++it) {
      const double Av = matvec(wk, v);
      v = Av / clamp_min(sqrt(team.sum(Av * Av)), TINY);
    }
    const double lam = clamp_min(team.sum(v * matvec(wk, v)), TINY);

    double alpha = act ? 1.0 / n : 0.0, Ma;
    double r = radius(alpha, Ma);
    double grad = act ? bh + sh * Ma / r : 0.0;
    // Diagonal (Jacobi) metric: steps and projection in the norm sum_i wd_i x_i^2.
    const double wd = act ? clamp_min(mh[tid * ld + tid], sv::PRECOND_FLOOR) : 1.0;
    double eta = r / (sh * lam + 1e-6 * r);
    double z = alpha;
    for (int it = 0; it < sv::DUAL_ITERS; ++it) {
      if (it % sv::POLISH_EVERY == sv::POLISH_EVERY - 1) {
        const double face = face_solve(z > 0, bh, sh);
        if (objective(face, bh, sh) < objective(alpha, bh, sh)) alpha = face;
        r = radius(alpha, Ma);
        grad = act ? bh + sh * Ma / r : 0.0;
      }
      z = project(alpha - eta * grad / wd, wd);
      const double d = z - alpha;
      const double Md = matvec(mh, d);
      double dots[3] = {d * bh, Ma * d, d * Md};
      team.reduce(dots, Add{});
      const double t = sv::segment_step(dots[0], r * r, dots[1], dots[2], sh);
      alpha = alpha + t * d;
      r = radius(alpha, Ma);
      const double grad_new = act ? bh + sh * Ma / r : 0.0;
      const double step = t * d, dgrad = grad_new - grad;
      double bb[2] = {step * dgrad, step * (wd * step)};
      team.reduce(bb, Add{});
      eta = sv::clamp(bb[0] > TINY ? bb[1] / clamp_min(bb[0], TINY) : eta, 1e-10, 1e10);
      grad = grad_new;
    }
    const double polished = face_solve(z > 0, bh, sh);
    const double max_norm = sqrt(clamp_min(diag_max / scale, 0.0));
    const bool better = gap_h(max_norm, bh, sh, polished) < gap_h(max_norm, bh, sh, alpha);
    // Long steps leave 1^T alpha off by ~|alpha - eta grad| eps: back onto the simplex.
    const double out = act && better ? polished : act ? alpha : 0.0;
    return out / clamp_min(team.sum(out), TINY);
  }
};

// What solve_kernel computes.
enum class Method : int {
  kCameGrad,  // solver.camegrad_coefficients on M
  kCAGrad,    // methods.cagrad_coefficients: the above on Mw, weights 1, RECTIFY only
  kMGDA,      // methods.mgda_coefficients: the min-norm point of Mw (or of the l2-normalised gradients)
};

struct Problem {
  Method method;
  double rho, kappa, nu, eps;  // CAME-Grad (CAGrad: rho, then 1, 0, 0)
  int stages;                  // CAME-Grad (CAGrad: RECTIFY)
  double factor;               // CAGrad: coeffs = w a_u / factor (the rescale option)
  bool l2;                     // MGDA: normalization "l2"
};

template <typename A, int W>
__global__ void __launch_bounds__(32 * W)
    solve_kernel(const A* __restrict__ M, const A* __restrict__ w, int n, Problem p,
                 A* __restrict__ alpha_out, A* __restrict__ coeffs_out, A* __restrict__ gap_out,
                 uint8_t* __restrict__ skipped) {
  extern __shared__ double smem[];
  Solver<W> S(smem, n);
  const int tid = S.tid;
  const bool act = S.act;
  const double wi = act ? double(w[tid]) : 0.0;
  // wk = the method's matrix: M for CAME-Grad; Mw = M w w^T (the weighted
  // gradients w_i g_i) for the baselines, which MGDA "l2" normalises to
  // Mn = Mw inv inv^T (inv_i = 1 / ||w_i g_i||, 0 for a zero gradient).
  // Returns whether the entries of M this thread read were finite.
  double inv = 1.0;
  auto load = [&] {
    const bool finite =
        load_gram(M, p.method == Method::kCameGrad ? nullptr : w, S.wk, n, S.ld, tid, Team<W>::kThreads);
    if (p.method == Method::kMGDA && p.l2) {
      S.sync();
      const double norm = act ? sqrt(clamp_min(S.wk[tid * S.ld + tid], 0.0)) : 0.0;
      inv = norm > 0 ? 1.0 / clamp_min(norm, TINY) : 0.0;
      S.scale(inv);
    }
    return finite;
  };
  if (!S.team.all(load())) {  // uniform: the whole block leaves
    if (act) alpha_out[tid] = A(NAN), coeffs_out[tid] = A(0);
    if (tid == 0) *gap_out = A(NAN), *skipped = 1;
    return;
  }
  S.sync();
  double dm[1] = {act ? S.wk[tid * S.ld + tid] : -INFINITY};
  S.team.reduce(dm, Max{});
  const double diag_max = dm[0];

  double alpha = NAN, coeffs, gap = NAN;
  if (p.method == Method::kMGDA) {
    // Any s > 0 has the same argmin; s = sqrt(max_i Mn_ii) keeps the problem O(1).
    const double scale = clamp_min(diag_max, TINY);
    alpha = clamp_min(S.solve_dual(0.0, sqrt(scale), diag_max), 0.0);
    // Back onto the simplex (the iterates drift ~1e-10 on singular Grams).
    const double total = S.team.sum(alpha);
    const bool ok = total > 0 && isfinite(total);
    alpha = !act ? 0.0 : ok ? alpha / clamp_min(total, TINY) : 1.0 / n;
    S.sync();  // the face systems in wk are read no more
    load();
    const double Ma = S.matvec(S.wk, alpha);
    const double aMa = S.team.sum(alpha * Ma);
    double ma_min[1] = {act ? Ma : INFINITY};
    S.team.reduce(ma_min, Min{});
    gap = clamp_min((aMa - ma_min[0]) / scale, 0.0);  // Frank-Wolfe: 0 at the min-norm point
    coeffs = wi * inv * alpha;
  } else {
    const double ws = p.method == Method::kCAGrad ? (act ? 1.0 : 0.0) : wi;  // the solver's weights
    const double a_mu = act ? 1.0 / n : 0.0;
    const double b = S.matvec(S.wk, a_mu);
    const double s = p.rho * sqrt(clamp_min(S.team.sum(a_mu * b), 0.0));
    const double max_norm = sqrt(clamp_min(diag_max, 0.0));

    double a_u = ws;
    if (p.stages & sv::RECTIFY) {
      // solver.rectify: the dual on the smoothed Gram at the Gram's own precision
      // (solver.smoothing), b and s those of M, with each zero gradient's row and
      // column replaced by those of the largest task (top: the first index of the
      // largest diagonal entry, as torch.argmax) and its weight handed back to top
      // after the solve. wk = that Ms, formed again after the solve for k.
      const double gamma = sv::smoothing(sizeof(A) == sizeof(float) ? FLT_EPSILON : DBL_EPSILON);
      const double diag = act ? S.wk[tid * S.ld + tid] : -INFINITY;  // read after the sync above
      const bool zero = act && !(diag > 0);
      const int top = S.team.argmax(diag, tid);  // finite on [0, n), -inf beyond: an active task
      const double b_top = S.team.sum(tid == top ? b : 0.0);  // exact: one entry and zeros
      S.remap(zero, top);
      S.smooth(gamma);
      S.sync();  // solve_dual reads the rows of other threads
      double ds[1] = {act ? S.wk[tid * S.ld + tid] : -INFINITY};
      S.team.reduce(ds, Max{});
      alpha = S.solve_dual(zero ? b_top : b, s, ds[0]);
      S.sync();  // the face systems in wk are read no more
      load();
      S.remap(zero, top);
      S.smooth(gamma);
      double Ma;
      const double k = Solver<W>::rectify_scale(s, S.norm(S.wk, alpha, Ma));
      const double moved = S.team.sum(zero ? alpha : 0.0);
      alpha = (zero ? 0.0 : alpha) + (tid == top ? moved : 0.0);
      a_u = act ? a_mu + k * alpha : 0.0;
      S.sync();  // Ms is read no more
      load();
      const double r = S.norm(S.wk, alpha, Ma);
      gap = S.gap(Ma, r, max_norm, diag, b, s, alpha, k);
    }
    double a_en = a_u, joint = ws;
    if (p.stages & sv::RESCALE) {
      const double tau = p.kappa * sqrt(clamp_min(S.team.sum(ws * S.matvec(S.wk, ws)), 0.0));
      const double norm_u = sqrt(clamp_min(S.team.sum(a_u * S.matvec(S.wk, a_u)), 0.0));
      const double denom = norm_u + p.eps;
      a_en = denom > 0.0 ? a_u * (tau / denom) : 0.0;  // u = 0, eps = 0: keep 0, not 0/0
      joint = p.kappa * ws;
    }
    const double fuse = (p.stages & sv::FUSE) ? p.nu : 0.0;
    coeffs = (1.0 - fuse) * a_en + fuse * joint;
    if (p.method == Method::kCAGrad) coeffs = wi * coeffs / p.factor;
  }
  if (act) alpha_out[tid] = A(alpha), coeffs_out[tid] = A(coeffs);
  if (tid == 0) *gap_out = A(gap), *skipped = 0;
}

template <typename A>
cudaError_t launch(const A* M, const A* w, int64_t n, const Problem& p, A* alpha, A* coeffs, A* gap,
                   uint8_t* skipped, cudaStream_t stream) {
  if (n < 1 || n > kSolveMaxN) return cudaErrorInvalidValue;
  if (n <= 32)
    return launch_block(solve_kernel<A, 1>, Team<1>::kThreads, shared_bytes<1>(int(n)), stream, M, w, int(n),
                        p, alpha, coeffs, gap, skipped);
  return launch_block(solve_kernel<A, 2>, Team<2>::kThreads, shared_bytes<2>(int(n)), stream, M, w, int(n), p,
                      alpha, coeffs, gap, skipped);
}

}  // namespace

template <typename A>
cudaError_t launch_solve(const A* M, const A* w, int64_t n, double rho, double kappa, double nu, double eps,
                         int stages, A* alpha, A* coeffs, A* gap, uint8_t* skipped, cudaStream_t stream) {
  const Problem p{Method::kCameGrad, rho, kappa, nu, eps, stages, 1.0, false};
  return launch(M, w, n, p, alpha, coeffs, gap, skipped, stream);
}

template <typename A>
cudaError_t launch_cagrad(const A* M, const A* w, int64_t n, double rho, int rescale, A* alpha, A* coeffs,
                          A* gap, uint8_t* skipped, cudaStream_t stream) {
  if (rescale < 0 || rescale > 2) return cudaErrorInvalidValue;
  const double factor = rescale == 1 ? 1.0 + rho * rho : rescale == 2 ? 1.0 + rho : 1.0;
  const Problem p{Method::kCAGrad, rho, 1.0, 0.0, 0.0, sv::RECTIFY, factor, false};
  return launch(M, w, n, p, alpha, coeffs, gap, skipped, stream);
}

template <typename A>
cudaError_t launch_mgda(const A* M, const A* w, int64_t n, bool l2, A* alpha, A* coeffs, A* gap,
                        uint8_t* skipped, cudaStream_t stream) {
  const Problem p{Method::kMGDA, 0.0, 0.0, 0.0, 0.0, 0, 1.0, l2};
  return launch(M, w, n, p, alpha, coeffs, gap, skipped, stream);
}

#define CAMEGRAD_SOLVE(A)                                                                                    \
  template cudaError_t launch_solve<A>(const A*, const A*, int64_t, double, double, double, double, int, A*, \
                                       A*, A*, uint8_t*, cudaStream_t);                                      \
  template cudaError_t launch_cagrad<A>(const A*, const A*, int64_t, double, int, A*, A*, A*, uint8_t*,      \
                                        cudaStream_t);                                                       \
  template cudaError_t launch_mgda<A>(const A*, const A*, int64_t, bool, A*, A*, A*, uint8_t*,               \
                                      cudaStream_t);
CAMEGRAD_SOLVE(float)
CAMEGRAD_SOLVE(double)
#undef CAMEGRAD_SOLVE

}  // namespace cuda
}  // namespace camegrad
