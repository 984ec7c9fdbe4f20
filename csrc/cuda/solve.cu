// The solve (design note §3): solver.camegrad_coefficients in double, step for
// step, by one thread block. Thread i owns task i, i.e. entry i of every
// n-vector; vectors that all threads read (matvec operands, the sort) pass
// through shared memory, and every reduction gives all threads the same bits,
// so all data-dependent decisions are uniform. The work is fixed (the loop
// counts of solver.py), the only host-side work is the launch.
//
// Shared memory holds Mh = M / max(diag M) and a second n x n work matrix: M
// itself, then P Mh P for the power iteration, then each face system.
// The scalar steps (segment line search, clamps, constants) are those of the
// CPU port in csrc/cpu/solver.h, which are __host__ __device__.
#include <cfloat>
#include <cmath>

#include "camegrad_cuda.cuh"
#include "solver.h"

namespace camegrad {
namespace cuda {
namespace {

namespace sv = camegrad::solver;
using sv::clamp_min;
using sv::TINY;

constexpr unsigned kFull = 0xffffffffu;

struct Add {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};
struct Min {
  __device__ double operator()(double a, double b) const { return fmin(a, b); }
};

// W warps: 1 for n <= 32 (warp-synchronous, no block barriers), 2 for n <= 64.
template <int W>
struct Team {
  static constexpr int kThreads = 32 * W;
  int tid, top;  // top: first xor-shuffle offset covering lanes [0, n)
  double* red;   // [2][W][4] ping-pong partials: one barrier per reduction
  int phase;

  __device__ Team(int n, double* red_) : tid(threadIdx.x), top(16), red(red_), phase(0) {
    if (W == 1)
      while (top > 0 && top >= n) top >>= 1;  // smallest top with 2 * top >= n (0 for n = 1)
  }
  __device__ void sync() const {
    if (W == 1)
      __syncwarp();
    else
      __syncthreads();
  }
  __device__ double* slot() {
    double* s = red + phase * W * 4;
    phase ^= 1;
    return s;
  }

  // K values reduced with op over the block, the same result in every thread.
  template <int K, class Op>
  __device__ void reduce(double (&v)[K], Op op) {
    for (int off = top; off > 0; off >>= 1)
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = op(v[k], __shfl_xor_sync(kFull, v[k], off));
    if (W == 1) {
      if (top < 16)  // lanes beyond 2 * top did not take part: broadcast lane 0
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = __shfl_sync(kFull, v[k], 0);
      return;
    }
    double* s = slot();
    if ((tid & 31) == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) s[(tid >> 5) * 4 + k] = v[k];
    sync();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      double a = s[k];
      for (int w = 1; w < W; ++w) a = op(a, s[w * 4 + k]);
      v[k] = a;
    }
  }
  __device__ double sum(double x) {
    double v[1] = {x};
    reduce(v, Add{});
    return v[0];
  }

  // Index of the largest value, the first such index on ties (LAPACK's idamax).
  // Values must not be NaN.
  __device__ int argmax(double v, int i) {
    for (int off = 16; off > 0; off >>= 1) {
      const double ov = __shfl_xor_sync(kFull, v, off);
      const int oi = __shfl_xor_sync(kFull, i, off);
      if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
    }
    if (W == 1) return i;
    double* s = slot();
    if ((tid & 31) == 0) s[(tid >> 5) * 4] = v, s[(tid >> 5) * 4 + 1] = i;
    sync();
    v = s[0], i = int(s[1]);
    for (int w = 1; w < W; ++w)
      if (s[w * 4] > v) v = s[w * 4], i = int(s[w * 4 + 1]);  // earlier warps hold lower indices
    return i;
  }

  __device__ bool all(bool p) {
    if (W == 1) return __all_sync(kFull, p);
    return __syncthreads_and(p);
  }
  __device__ int count(bool p) {
    if (W == 1) return __popc(__ballot_sync(kFull, p));
    return __syncthreads_count(p);
  }
  // Exclusive prefix count of p (in thread order); total gets the count.
  __device__ int prefix(bool p, int& total) {
    const unsigned mask = __ballot_sync(kFull, p);
    int before = __popc(mask & ((1u << (tid & 31)) - 1u));
    if (W == 1) {
      total = __popc(mask);
      return before;
    }
    double* s = slot();
    if ((tid & 31) == 0) s[(tid >> 5) * 4] = __popc(mask);
    sync();
    total = 0;
    for (int w = 0; w < W; ++w) {
      const int c = int(s[w * 4]);
      before += w < (tid >> 5) ? c : 0;
      total += c;
    }
    return before;
  }
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
  double *xs, *us, *cs, *bs;  // [kThreads] each: operands, sorted, cumsums, bh
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

  // solver.project_simplex: descending sort by rank (ties by index), cumsum in
  // sorted order, count of the positive prefix, threshold.
  __device__ double project(double v) {
    sync();
    xs[tid] = v;
    sync();
    if (act) {
      int rank = 0;
      for (int j = 0; j < n; ++j) rank += xs[j] > v || (xs[j] == v && j < tid);
      us[rank] = v;
    }
    sync();
    bool positive = false;
    if (act) {
      double css = 0.0;
      for (int j = 0; j <= tid; ++j) css += us[j];
      css -= 1.0;
      cs[tid] = css;
      positive = us[tid] - css / (tid + 1) > 0;
    }
    const int count = max(team.count(positive), 1);
    sync();
    const double theta = cs[count - 1] / count;
    return act ? clamp_min(v - theta, 0.0) : 0.0;
  }

  // solver._face_solve on the support {i : in_support}: Gaussian elimination
  // with partial pivoting of the compacted ridged system with right-hand sides
  // (1, bh), then the closed form of design note §2b. A zero or non-finite
  // pivot invalidates the candidate (LAPACK's inf/NaN in solver.py).
  __device__ double face_solve(bool in_support, double bh, double sh) {
    int m;
    const int ci = team.prefix(in_support, m);
    if (in_support) orig[ci] = tid;
    sync();
    const double ridge = 8.0 * n * DBL_EPSILON;
    if (tid < m) {
      const int i = orig[tid];
      double* row = wk + tid * ld;
      for (int c = 0; c < m; ++c) row[c] = mh[i * ld + orig[c]] + (c == tid ? ridge : 0.0);
      row[m] = 1.0;
      row[m + 1] = bs[i];
    }
    sync();
    bool solved = true;
    for (int k = 0; k < m; ++k) {
      double mag = tid >= k && tid < m ? fabs(wk[tid * ld + k]) : -1.0;
      if (isnan(mag)) mag = INFINITY;  // keep the argmax uniform; the pivot check fails it
      const int p = team.argmax(mag, tid);
      if (p != k) {
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
    const double p = in_support ? wk[ci * ld + m] : 0.0;
    const double q = in_support ? wk[ci * ld + m + 1] : 0.0;
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

  // solver.duality_gap of alpha on (A, b, s); max_norm = sqrt(max diag A).
  __device__ double gap(const double* A, double max_norm, double b, double s, double a, double r_tol) {
    const double Ma = matvec(A, a);
    double v[3] = {a * Ma, a * b, b};
    team.reduce(v, Add{});
    const double r = sqrt(clamp_min(v[0], 0.0));
    const double k = r > r_tol * max_norm ? s / clamp_min(r, TINY) : 0.0;
    double primal[1] = {act ? b + k * Ma : INFINITY};
    team.reduce(primal, Min{});
    const double dual = v[1] + s * r;
    const double mu_norm = sqrt(clamp_min(v[2] / n, 0.0));
    return (dual - primal[0]) / clamp_min(mu_norm * max_norm, TINY);
  }

  // sqrt(alpha^T Mh alpha) clamped to TINY, and Mh alpha.
  __device__ double radius(double a, double& Ma) {
    Ma = matvec(mh, a);
    return clamp_min(sqrt(clamp_min(team.sum(a * Ma), 0.0)), TINY);
  }

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
    double eta = r / (sh * lam + 1e-6 * r);
    double z = alpha;
    for (int it = 0; it < sv::DUAL_ITERS; ++it) {
      if (it % sv::POLISH_EVERY == sv::POLISH_EVERY - 1) {
        const double face = face_solve(z > 0, bh, sh);
        if (objective(face, bh, sh) < objective(alpha, bh, sh)) alpha = face;
        r = radius(alpha, Ma);
        grad = act ? bh + sh * Ma / r : 0.0;
      }
      z = project(alpha - eta * grad);
      const double d = z - alpha;
      const double Md = matvec(mh, d);
      double dots[3] = {d * bh, Ma * d, d * Md};
      team.reduce(dots, Add{});
      const double t = sv::segment_step(dots[0], r * r, dots[1], dots[2], sh);
      alpha = alpha + t * d;
      r = radius(alpha, Ma);
      const double grad_new = act ? bh + sh * Ma / r : 0.0;
      const double step = t * d, dgrad = grad_new - grad;
      double bb[2] = {step * dgrad, step * step};
      team.reduce(bb, Add{});
      eta = sv::clamp(bb[0] > TINY ? bb[1] / clamp_min(bb[0], TINY) : eta, 1e-10, 1e10);
      grad = grad_new;
    }
    const double polished = face_solve(z > 0, bh, sh);
    const double r_tol = sv::relative_tolerance(DBL_EPSILON);
    const double max_norm = sqrt(clamp_min(diag_max / scale, 0.0));
    const bool better = gap(mh, max_norm, bh, sh, polished, r_tol) < gap(mh, max_norm, bh, sh, alpha, r_tol);
    return better ? polished : alpha;
  }
};

// M (as double) into wk; whether this thread's entries were all finite.
template <typename A>
__device__ bool load_gram(const A* M, double* wk, int n, int ld, int tid, int threads) {
  bool finite = true;
  for (int e = tid; e < n * n; e += threads) {
    const double v = M[e];
    finite = finite && isfinite(v);
    wk[(e / n) * ld + e % n] = v;
  }
  return finite;
}

template <typename A, int W>
__global__ void __launch_bounds__(32 * W)
    solve_kernel(const A* __restrict__ M, const A* __restrict__ w, int n, double rho, double kappa, double nu,
                 double eps, int stages, A* __restrict__ alpha_out, A* __restrict__ coeffs_out,
                 A* __restrict__ gap_out, uint8_t* __restrict__ skipped) {
  extern __shared__ double smem[];
  Solver<W> S(smem, n);
  const int tid = S.tid;
  const bool act = S.act;
  if (!S.team.all(load_gram(M, S.wk, n, S.ld, tid, Team<W>::kThreads))) {  // uniform: the whole block leaves
    if (act) alpha_out[tid] = A(NAN), coeffs_out[tid] = A(0);
    if (tid == 0) *gap_out = A(NAN), *skipped = 1;
    return;
  }
  S.sync();

  const double a_mu = act ? 1.0 / n : 0.0;
  const double b = S.matvec(S.wk, a_mu);
  const double s = rho * sqrt(clamp_min(S.team.sum(a_mu * b), 0.0));
  const double wi = act ? double(w[tid]) : 0.0;
  double dm[1] = {act ? S.wk[tid * S.ld + tid] : -INFINITY};
  S.team.reduce(dm, Max{});
  const double diag_max = dm[0], max_norm = sqrt(clamp_min(diag_max, 0.0));
  const double r_tol = sv::relative_tolerance(sizeof(A) == sizeof(float) ? FLT_EPSILON : DBL_EPSILON);

  double alpha = NAN, a_u = wi, gap = NAN;
  if (stages & sv::RECTIFY) {
    alpha = S.solve_dual(b, s, diag_max);
    S.sync();  // the face systems in wk are read no more
    load_gram(M, S.wk, n, S.ld, tid, Team<W>::kThreads);
    const double Ma = S.matvec(S.wk, alpha);
    const double r = sqrt(clamp_min(S.team.sum(alpha * Ma), 0.0));
    const double k = r > r_tol * max_norm ? s / clamp_min(r, TINY) : 0.0;
    a_u = act ? a_mu + k * alpha : 0.0;
    gap = S.gap(S.wk, max_norm, b, s, alpha, r_tol);
  }
  double a_en = a_u, joint = wi;
  if (stages & sv::RESCALE) {
    const double tau = kappa * sqrt(clamp_min(S.team.sum(wi * S.matvec(S.wk, wi)), 0.0));
    const double norm_u = sqrt(clamp_min(S.team.sum(a_u * S.matvec(S.wk, a_u)), 0.0));
    const double denom = norm_u + eps;
    a_en = denom > 0.0 ? a_u * (tau / denom) : 0.0;  // u = 0, eps = 0: keep 0, not 0/0
    joint = kappa * wi;
  }
  const double fuse = (stages & sv::FUSE) ? nu : 0.0;
  const double coeffs = (1.0 - fuse) * a_en + fuse * joint;
  if (act) alpha_out[tid] = A(alpha), coeffs_out[tid] = A(coeffs);
  if (tid == 0) *gap_out = A(gap), *skipped = 0;
}

template <typename A, int W>
cudaError_t launch(const A* M, const A* w, int n, double rho, double kappa, double nu, double eps, int stages,
                   A* alpha, A* coeffs, A* gap, uint8_t* skipped, cudaStream_t stream) {
  const size_t smem = shared_bytes<W>(n);
  if (smem > 48 * 1024) {  // above the default limit needs an opt-in (capture safe: not a stream op)
    const cudaError_t err =
        cudaFuncSetAttribute(solve_kernel<A, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  solve_kernel<A, W><<<1, Team<W>::kThreads, smem, stream>>>(M, w, n, rho, kappa, nu, eps, stages, alpha,
                                                             coeffs, gap, skipped);
  return cudaSuccess;
}

}  // namespace

template <typename A>
cudaError_t launch_solve(const A* M, const A* w, int64_t n, double rho, double kappa, double nu, double eps,
                         int stages, A* alpha, A* coeffs, A* gap, uint8_t* skipped, cudaStream_t stream) {
  if (n < 1 || n > kSolveMaxN) return cudaErrorInvalidValue;
  if (n <= 32)
    return launch<A, 1>(M, w, int(n), rho, kappa, nu, eps, stages, alpha, coeffs, gap, skipped, stream);
  return launch<A, 2>(M, w, int(n), rho, kappa, nu, eps, stages, alpha, coeffs, gap, skipped, stream);
}

template cudaError_t launch_solve<float>(const float*, const float*, int64_t, double, double, double, double,
                                         int, float*, float*, float*, uint8_t*, cudaStream_t);
template cudaError_t launch_solve<double>(const double*, const double*, int64_t, double, double, double,
                                          double, int, double*, double*, double*, uint8_t*, cudaStream_t);

}  // namespace cuda
}  // namespace camegrad
