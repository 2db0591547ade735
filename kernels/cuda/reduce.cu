#include "kernels/cuda/reduce.h"

#include <algorithm>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

// One block of 1024 threads: per-thread double sums in a fixed stride pattern, then block_sum.
template <class T, class O>
__global__ void sum_kernel(const T* x, int64_t n, O* out, double factor) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += to_f(x[i]);
  const double total = block_sum(s);
  if (threadIdx.x == 0) out[0] = from_f<O>(static_cast<float>(total * factor));
}

template <class T>
__global__ void sum_kernel_f64(const T* x, int64_t n, double* out, double factor) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += to_f(x[i]);
  const double total = block_sum(s);
  if (threadIdx.x == 0) out[0] = total * factor;
}

constexpr int kMaxDims = 8;

// The dims of x split into kept (they index out, row-major) and reduced ones.
struct SumToGeom {
  int nk = 0, nr = 0;
  int64_t k_shape[kMaxDims], k_xstride[kMaxDims];
  int64_t r_shape[kMaxDims], r_xstride[kMaxDims];
  int64_t reduce_count = 1;
};

// General case: one thread per output element, the reduced elements in row-major order.
template <class T>
__global__ void sum_to_kernel(const T* x, T* out, int64_t out_numel, SumToGeom g) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < out_numel;
       o += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = o, base = 0;
    for (int d = g.nk - 1; d >= 0; --d) {
      base += (rem % g.k_shape[d]) * g.k_xstride[d];
      rem /= g.k_shape[d];
    }
    float s = 0;
    for (int64_t r = 0; r < g.reduce_count; ++r) {
      int64_t rr = r, off = base;
      for (int d = g.nr - 1; d >= 0; --d) {
        off += (rr % g.r_shape[d]) * g.r_xstride[d];
        rr /= g.r_shape[d];
      }
      s += to_f(x[off]);
    }
    out[o] = from_f<T>(s);
  }
}

// x read as (rows, cols) summed over rows (a linear layer's bias gradient). Grid: column tiles of
// 32 × row chunks; block (32, 8). Each block sums its chunk's rows of its 32 columns (8 row
// groups added in order through shared memory) into a static partial slot; the block of a column
// tile that arrives last (an integer counter, exact) adds the chunks' partials in chunk order.
// The sizes alone fix the order: deterministic. One chunk per block column left 8 blocks
// walking 4096 rows each for 256 columns: 34 µs for 2 MB (kernels/cuda/NOTES.md). The slots
// and counters are one static set per process: calls are ordered on the one stream.
constexpr int kSumRowsSlots = 1 << 20;  // floats of partial sums (4 MiB)
constexpr int kSumRowsMaxChunks = 64;
constexpr int kSumRowsRowsPerChunk = 256;  // rows a chunk takes at least
constexpr int64_t kSumRowsMaxCols = 65536;
__device__ float g_sumrows_partial[kSumRowsSlots];
__device__ unsigned g_sumrows_arrived[kSumRowsMaxCols / 32];

template <class T>
__global__ void sum_rows_kernel(const T* x, T* out, int64_t rows, int64_t cols, int64_t rows_per_chunk) {
  __shared__ float part[8][33];
  __shared__ bool last;
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows_per_chunk, r1 = min(rows, r0 + rows_per_chunk);
  float s = 0;
  if (c < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) s += to_f(x[r * cols + c]);
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0) {
    float t = 0;
    for (int y = 0; y < 8; ++y) t += part[y][threadIdx.x];
    if (c < cols) g_sumrows_partial[blockIdx.y * cols + c] = t;
    __threadfence();  // the slot is visible device-wide before the arrival is counted
  }
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0)
    last = atomicAdd(&g_sumrows_arrived[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last || threadIdx.y != 0) return;
  if (c < cols) {
    float t = 0;  // L2 reads: other SMs wrote the slots
    for (unsigned k = 0; k < gridDim.y; ++k) t += __ldcg(g_sumrows_partial + k * cols + c);
    out[c] = from_f<T>(t);
  }
  if (threadIdx.x == 0) g_sumrows_arrived[blockIdx.x] = 0;
}

struct ScalarList {
  ScalarRef s[kMaxGatherScalars];
  int n;
};

__global__ void gather_scalars_kernel(ScalarList in, double* out) {
  const int i = threadIdx.x;
  if (i >= in.n) return;
  const ScalarRef r = in.s[i];
  out[i] = r.kind == ScalarRef::F32   ? static_cast<double>(*static_cast<const float*>(r.p))
           : r.kind == ScalarRef::F64 ? *static_cast<const double*>(r.p)
                                      : static_cast<double>(*static_cast<const int*>(r.p));
}

}  // namespace

void gather_scalars(const std::vector<ScalarRef>& in, double* out) {
  PF_CHECK(!in.empty() && in.size() <= kMaxGatherScalars,
           "gather_scalars: 1 to " << kMaxGatherScalars << " scalars, got " << in.size());
  ScalarList l{};
  for (size_t i = 0; i < in.size(); ++i) l.s[i] = in[i];
  l.n = static_cast<int>(in.size());
  gather_scalars_kernel<<<1, 32, 0, cur_stream()>>>(l, out);
  PF_CUDA_CHECK_LAUNCH("gather_scalars");
}

void sum(ScalarType t, const void* x, int64_t n, ScalarType out_t, void* out, double factor) {
  dispatch_dtype(t, "sum", [&](auto tag) {
    using T = decltype(tag);
    if (out_t == ScalarType::F64) {
      sum_kernel_f64<T>
          <<<1, 1024, 0, cur_stream()>>>(static_cast<const T*>(x), n, static_cast<double*>(out), factor);
    } else {
      dispatch_dtype(out_t, "sum (output)", [&](auto otag) {
        using O = decltype(otag);
        sum_kernel<T, O>
            <<<1, 1024, 0, cur_stream()>>>(static_cast<const T*>(x), n, static_cast<O*>(out), factor);
      });
    }
    PF_CUDA_CHECK_LAUNCH("sum");
  });
}

void sum_to(ScalarType t, const void* x, const int64_t* shape, int ndim, const int64_t* out_stride, void* out,
            int64_t out_numel) {
  if (out_numel == 0) return;
  PF_CHECK(ndim <= kMaxDims, "sum_to over " << ndim << " dims, at most " << kMaxDims);
  SumToGeom g;
  int64_t xs = 1;
  std::vector<int64_t> xstride(ndim);
  for (int d = ndim - 1; d >= 0; --d) {
    xstride[d] = xs;
    xs *= shape[d];
  }
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 1) continue;
    if (out_stride[d] != 0) {
      g.k_shape[g.nk] = shape[d];
      g.k_xstride[g.nk++] = xstride[d];
    } else {
      g.r_shape[g.nr] = shape[d];
      g.r_xstride[g.nr++] = xstride[d];
      g.reduce_count *= shape[d];
    }
  }
  // Fast path: the reduced dims all lead and the kept ones are the contiguous tail, i.e. x is
  // (rows, out_numel) summed over rows (a bias gradient, a batch-broadcast table).
  bool leading = true;
  for (int d = 0, seen_kept = 0; d < ndim; ++d) {
    if (shape[d] == 1) continue;
    if (out_stride[d] != 0)
      seen_kept = 1;
    else if (seen_kept)
      leading = false;
  }
  dispatch_dtype(t, "sum_to", [&](auto tag) {
    using T = decltype(tag);
    if (leading && out_numel < kSumRowsMaxCols) {
      const int64_t rows = g.reduce_count;
      const int64_t chunks =
          std::max<int64_t>(1, std::min({(rows + kSumRowsRowsPerChunk - 1) / kSumRowsRowsPerChunk,
                                         int64_t{kSumRowsMaxChunks}, kSumRowsSlots / out_numel}));
      const int64_t per_chunk = std::max<int64_t>(1, (rows + chunks - 1) / chunks);
      const dim3 grid(static_cast<unsigned>((out_numel + 31) / 32), static_cast<unsigned>(chunks));
      sum_rows_kernel<T><<<grid, dim3(32, 8), 0, cur_stream()>>>(
          static_cast<const T*>(x), static_cast<T*>(out), rows, out_numel, per_chunk);
    } else {
      sum_to_kernel<T><<<grid_for(out_numel, 256), 256, 0, cur_stream()>>>(
          static_cast<const T*>(x), static_cast<T*>(out), out_numel, g);
    }
    PF_CUDA_CHECK_LAUNCH("sum_to");
  });
}

}  // namespace pf::kernels::cuda
