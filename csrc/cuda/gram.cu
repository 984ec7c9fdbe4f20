// Pass 1: M = G G^T (docs/camegrad.md §3) in one read of G, in double for every
// input dtype.
//
// Precision: a product of two fp16/bf16/fp32 values is exact in fp64, so the
// staged chunk is converted to double once and every product is summed in
// double (fp64 FMAs): M is accurate to ~eps64 |g_i| |g_j|. An fp32 accumulator
// is off by ~eps32 |g_i| |g_j|, which relative to |g_i|^2 grows with the norm
// ratio |g_j| / |g_i|: at the 1e6-1e7 ratios of multi-task training the
// solver's answer is wrong. fp64 FMAs run at half the fp32 rate on A100/H100,
// and this pass is memory bound for the task counts it is meant for.
//
// Plan for A40-class GPUs (fp64 at 1/64 of the fp32 rate, where fp64 FMAs are
// no answer): stage fp32 as before and accumulate each dot in compensated fp32,
// the "Dot2" of Ogita, Rump and Oishi (2005): TwoProduct p = a * b,
// e = fmaf(a, b, -p) (exact: a * b = p + e), TwoSum of p into the running sum s
// with its rounding error added, together with e, into a compensation c; every
// per-lane (s, c) is then widened to double for the fixed-order lane, block and
// stage-2 sums, so only a lane's own (short, strided) run is in fp32 pairs.
// That is as accurate as summing in twice fp32's precision, at ~7 fp32 flops a
// product instead of 1/64-rate fp64 FMAs, and needs no change in the launch
// shape (the bits stay fixed by n and d). Not implemented yet: the fp64 path
// is the only one, and it is correct on every GPU, only slow on those.
//
// Stage 1: block (x, y) owns column chunks y, y + gridDim.y, ... of G and the
// tile pairs of group x. A chunk of all n rows is staged in shared memory (in
// double, converted once), then each thread accumulates a 4 x 4
// register tile of dot products for one pair of row tiles (I <= J) over a
// strided subset of the chunk's columns. The lanes of a tile pair are summed
// in a fixed order and the block writes its partials to the workspace.
// Stage 2 sums the partials of all column blocks in a fixed order.
//
// Row tile I holds rows I, I + T, I + 2T, I + 3T (T tiles): neighbouring
// tiles are then neighbouring rows, which keeps the 128-bit shared loads of a
// warp on distinct banks.
#include <algorithm>

#include "camegrad_cuda.cuh"
#include "vector_io.cuh"

namespace camegrad {
namespace cuda {
namespace {

constexpr int kTile = 4;            // a thread accumulates kTile x kTile dot products
constexpr int kThreads = 256;       // most threads of a stage-1 block
constexpr int kStageBytes = 16384;  // one staged chunk of G, in double
// Column blocks: many, so that the last wave's tail is short on any GPU (the
// count is fixed, not the SM count), but with partials kept under 2^24 elements.
constexpr int kMaxColumnBlocks = 4096;
constexpr int64_t kMaxWorkspace = int64_t(1) << 24;
constexpr int kFinalWarps = 16;

// Launch geometry. A function of (n, d) alone (the staged type is double for
// every dtype), never of the device, so that the summation order and hence
// every bit of M are fixed.
struct GramShape {
  int n, tiles, pairs;
  int tpb;      // tile pairs per block (blockIdx.x selects a group of them)
  int lanes;    // threads sharing one tile pair, splitting the chunk's columns
  int threads;  // block size
  int cols;     // columns per staged chunk
  int ld;       // shared row stride, padded by 16 bytes against bank conflicts
  int groups, blocks;
  int64_t d, chunks;
  size_t smem;
};

template <typename A>
GramShape gram_shape(int64_t n, int64_t d) {
  GramShape s;
  s.n = int(n);
  s.d = d;
  s.tiles = (s.n + kTile - 1) / kTile;
  s.pairs = s.tiles * (s.tiles + 1) / 2;
  s.tpb = std::min(s.pairs, kThreads);
  s.groups = (s.pairs + s.tpb - 1) / s.tpb;
  s.lanes = kThreads / s.tpb;
  s.threads = (s.tpb * s.lanes + 31) / 32 * 32;
  const int rows = s.tiles * kTile;
  // A multiple of 8 columns: whole 128-bit vectors for every dtype, and an odd
  // number of 16-byte units per padded row.
  s.cols = std::max(8, kStageBytes / int(rows * sizeof(A)) / 8 * 8);
  s.ld = s.cols + kVec<A>;
  s.chunks = (d + s.cols - 1) / s.cols;
  const int64_t entries = int64_t(s.pairs) * kTile * kTile;
  const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(kMaxColumnBlocks, kMaxWorkspace / entries));
  s.blocks = int(std::max<int64_t>(1, std::min(s.chunks, cap)));
  s.smem = std::max<size_t>(size_t(rows) * s.ld, size_t(s.lanes) * s.tpb * kTile * kTile) * sizeof(A);
  return s;
}

// Tile pair tp -> (I, J), I <= J, enumerated row by row.
__device__ __forceinline__ void tile_pair(int tp, int tiles, int& I, int& J) {
  I = 0;
  while (tp >= tiles - I) tp -= tiles - I++;
  J = I + tp;
}

template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    gram_partial(const T* __restrict__ G, const GramShape s, gram_t* __restrict__ ws) {
  using A = gram_t;
  constexpr int VA = kVec<A>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* sm = reinterpret_cast<A*>(smem_raw);
  const int tid = threadIdx.x;
  const int local = tid / s.lanes, lane = tid % s.lanes;
  const int tp = blockIdx.x * s.tpb + local;
  const bool active = local < s.tpb && tp < s.pairs;
  int I = 0, J = 0;
  if (active) tile_pair(tp, s.tiles, I, J);

  // Padding rows stay zero; staging only writes rows < n.
  for (int e = tid; e < (s.tiles * kTile - s.n) * s.ld; e += blockDim.x) sm[s.n * s.ld + e] = A(0);

  A acc[kTile][kTile] = {};
  for (int64_t chunk = blockIdx.y; chunk < s.chunks; chunk += gridDim.y) {
    __syncthreads();  // the previous chunk is consumed
    const int64_t col0 = chunk * s.cols;
    if constexpr (kVector) {
      constexpr int VT = kVec<T>;
      const int per_row = s.cols / VT;
      for (int v = tid; v < s.n * per_row; v += blockDim.x) {
        const int row = v / per_row, c = (v - row * per_row) * VT;
        acc_t<T> x[VT] = {};
        if (col0 + c < s.d) load_global(G + row * s.d + col0 + c, x);  // d % VT == 0: all or none
        A y[VT];
#pragma unroll
        for (int q = 0; q < VT; ++q) y[q] = A(x[q]);  // exact
        store_vec(sm + row * s.ld + c, y);
      }
    } else {
      for (int e = tid; e < s.n * s.cols; e += blockDim.x) {
        const int row = e / s.cols, c = e - row * s.cols;
        const int64_t col = col0 + c;
        sm[row * s.ld + c] = col < s.d ? A(to_acc(G[row * s.d + col])) : A(0);
      }
    }
    __syncthreads();
    if (active) {
      const int stride = s.tiles * s.ld;
      const A* a0 = sm + I * s.ld;
      const A* b0 = sm + J * s.ld;
      for (int k = lane * VA; k < s.cols; k += s.lanes * VA) {
        A a[kTile][VA], b[kTile][VA];
#pragma unroll
        for (int r = 0; r < kTile; ++r) {
          load16(a0 + r * stride + k, a[r]);
          load16(b0 + r * stride + k, b[r]);
        }
#pragma unroll
        for (int q = 0; q < VA; ++q)
#pragma unroll
          for (int r = 0; r < kTile; ++r)
#pragma unroll
            for (int c = 0; c < kTile; ++c) acc[r][c] = fma(a[r][q], b[c][q], acc[r][c]);
      }
    }
  }

  // Sum the lanes of each tile pair in lane order; one partial per pair entry.
  __syncthreads();
  constexpr int E = kTile * kTile;
  if (active)
#pragma unroll
    for (int r = 0; r < kTile; ++r)
#pragma unroll
      for (int c = 0; c < kTile; ++c) sm[(lane * s.tpb + local) * E + r * kTile + c] = acc[r][c];
  __syncthreads();
  const int first = blockIdx.x * s.tpb;
  const int count = (s.pairs - first < s.tpb ? s.pairs - first : s.tpb) * E;
  A* out = ws + int64_t(blockIdx.y) * s.pairs * E + int64_t(first) * E;
  for (int e = tid; e < count; e += blockDim.x) {
    A sum = sm[e];
    for (int l = 1; l < s.lanes; ++l) sum += sm[l * s.tpb * E + e];
    out[e] = sum;
  }
}

// Stage 2: lane x sums entry e over column blocks y, y + 16, ...; the 16 warp
// sums are then added in warp order. M is written symmetric (both halves from
// the same sum).
template <typename A>
__global__ void __launch_bounds__(32 * kFinalWarps)
    gram_final(const A* __restrict__ ws, const GramShape s, A* __restrict__ M) {
  constexpr int E = kTile * kTile;
  __shared__ A part[kFinalWarps][32];
  const int lane = threadIdx.x, warp = threadIdx.y;
  const int entries = s.pairs * E;
  const int e = blockIdx.x * 32 + lane;
  A sum = A(0);
  if (e < entries)
    for (int b = warp; b < s.blocks; b += kFinalWarps) sum += ws[int64_t(b) * entries + e];
  part[warp][lane] = sum;
  __syncthreads();
  if (warp != 0 || e >= entries) return;
  for (int w = 1; w < kFinalWarps; ++w) sum += part[w][lane];
  int I, J;
  tile_pair(e / E, s.tiles, I, J);
  const int r = e % E / kTile, c = e % kTile;
  const int i = I + r * s.tiles, j = J + c * s.tiles;
  if (i < s.n && j < s.n && (I < J || r <= c)) {
    M[i * s.n + j] = sum;
    M[j * s.n + i] = sum;
  }
}

}  // namespace

template <typename T>
size_t gram_workspace_elems(int64_t n, int64_t d) {
  if (n < 1 || n > kGramMaxN || d < 0) return 0;
  const GramShape s = gram_shape<gram_t>(n, d);
  return size_t(s.blocks) * s.pairs * kTile * kTile;
}

template <typename T>
cudaError_t launch_gram(const T* G, int64_t n, int64_t d, gram_t* workspace, gram_t* M, cudaStream_t stream) {
  using A = gram_t;
  if (n < 1 || n > kGramMaxN || d < 0) return cudaErrorInvalidValue;
  const GramShape s = gram_shape<A>(n, d);
  const dim3 grid(s.groups, s.blocks);
  // 128-bit loads need every row start aligned: an aligned base and d * sizeof(T) % 16 == 0.
  if (reinterpret_cast<uintptr_t>(G) % 16 == 0 && d % kVec<T> == 0)
    gram_partial<T, true><<<grid, s.threads, s.smem, stream>>>(G, s, workspace);
  else
    gram_partial<T, false><<<grid, s.threads, s.smem, stream>>>(G, s, workspace);
  const int entries = s.pairs * kTile * kTile;
  gram_final<A><<<(entries + 31) / 32, dim3(32, kFinalWarps), 0, stream>>>(workspace, s, M);
  return cudaSuccess;
}

#define CAMEGRAD_GRAM(T)                                     \
  template size_t gram_workspace_elems<T>(int64_t, int64_t); \
  template cudaError_t launch_gram<T>(const T*, int64_t, int64_t, gram_t*, gram_t*, cudaStream_t);
CAMEGRAD_GRAM(__half)
CAMEGRAD_GRAM(__nv_bfloat16)
CAMEGRAD_GRAM(float)
CAMEGRAD_GRAM(double)
#undef CAMEGRAD_GRAM

}  // namespace cuda
}  // namespace camegrad
