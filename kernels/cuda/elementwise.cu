#include "kernels/cuda/elementwise.h"

#include <vector>

#include "kernels/cpu/strided.h"
#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

struct BinaryGeom {
  int ndim;
  int64_t shape[cpu::kMaxDims];
  int64_t sa[cpu::kMaxDims], sb[cpu::kMaxDims];
};

__device__ __forceinline__ float apply(BinaryOp op, float a, float b) {
  return op == BinaryOp::Add ? a + b : op == BinaryOp::Sub ? a - b : a * b;
}

template <class T>
__global__ void binary_kernel(BinaryOp op, const T* a, const T* b, T* out, BinaryGeom g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, oa = 0, ob = 0;
    for (int d = g.ndim - 1; d >= 0; --d) {  // innermost dim last
      const int64_t c = rem % g.shape[d];
      rem /= g.shape[d];
      oa += c * g.sa[d];
      ob += c * g.sb[d];
    }
    out[i] = from_f<T>(apply(op, to_f(a[oa]), to_f(b[ob])));
  }
}

// a and b both contiguous with out's shape.
template <class T>
__global__ void binary_same_kernel(BinaryOp op, const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(apply(op, to_f(a[i]), to_f(b[i])));
}

template <class T>
__global__ void scale_kernel(const T* x, float s, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(s * to_f(x[i]));
}

template <class T>
__global__ void axpy_kernel(T* y, float alpha, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_f<T>(to_f(y[i]) + alpha * to_f(x[i]));
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

template <class T>
__global__ void gelu_forward_kernel(const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f(x[i]);
    y[i] = from_f<T>(0.5f * v * (1.0f + erff(v * kInvSqrt2)));
  }
}

// dx = dy·(Φ(x) + x·φ(x))
template <class T>
__global__ void gelu_backward_kernel(const T* x, const T* dy, T* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f(x[i]);
    const float cdf = 0.5f * (1.0f + erff(v * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
    dx[i] = from_f<T>(to_f(dy[i]) * (cdf + v * pdf));
  }
}

// Σx² without floating-point atomics (bitwise deterministic): each block writes its double sum
// to a partial slot, and the block that finishes last (an integer counter, exact) adds the slots
// in block order and adds the result to *acc. The slots and the counter are one static set per
// process: calls are ordered on the one stream, never concurrent. The counter is left at 0.
constexpr unsigned kSumSqMaxBlocks = 264;  // 2 per SM on an H100
__device__ double g_sumsq_partial[kSumSqMaxBlocks];
__device__ unsigned g_sumsq_arrived = 0;

// Several tensors in one launch (the optimizer's per-parameter work): up to kBatch tensors seen
// as one list of chunks of kChunkElems consecutive elements; chunk c belongs to tensor k with
// chunk_start[k] ≤ c < chunk_start[k + 1]; block b takes the chunks b, b + gridDim.x, ...
constexpr int kBatch = 24;
constexpr int64_t kChunkElems = 8 * 256;
struct TensorBatch {
  void* x[kBatch];
  int64_t n[kBatch];
  bool bf16[kBatch];
  int64_t chunk_start[kBatch + 1];
  int count;
  // The tensor of chunk c, searching from tensor k (chunks are visited in increasing order).
  __device__ int tensor_of(int64_t c, int k) const {
    while (k + 1 < count && c >= chunk_start[k + 1]) ++k;
    return k;
  }
  __device__ int64_t begin(int64_t c, int k) const { return (c - chunk_start[k]) * kChunkElems; }
  __device__ int64_t end(int64_t c, int k) const { return min(n[k], begin(c, k) + kChunkElems); }
};

template <class T>
__device__ __forceinline__ float sum_sq_range(const T* x, int64_t begin, int64_t end) {
  float s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v = to_f(x[i]);
    s += v * v;
  }
  return s;
}

template <class T>
__device__ __forceinline__ void scale_range(T* x, float s, int64_t begin, int64_t end) {
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) x[i] = from_f<T>(s * to_f(x[i]));
}

// s_dev (when given): the factor is *s_dev read on the device, and nothing is scaled unless
// *s_dev < 1 (a gradient clip's coefficient; NaN scales nothing).
__global__ void scale_many_kernel(TensorBatch b, float s, const double* s_dev) {
  if (s_dev) {
    const double c = *s_dev;
    if (!(c < 1.0)) return;
    s = static_cast<float>(c);
  }
  int k = 0;
  for (int64_t c = blockIdx.x; c < b.chunk_start[b.count]; c += gridDim.x) {
    k = b.tensor_of(c, k);
    if (b.bf16[k])
      scale_range(static_cast<bf16*>(b.x[k]), s, b.begin(c, k), b.end(c, k));
    else
      scale_range(static_cast<float*>(b.x[k]), s, b.begin(c, k), b.end(c, k));
  }
}

__global__ void sum_of_squares_kernel(TensorBatch b, double* acc) {
  float s = 0;
  int k = 0;
  for (int64_t c = blockIdx.x; c < b.chunk_start[b.count]; c += gridDim.x) {
    k = b.tensor_of(c, k);
    s += b.bf16[k] ? sum_sq_range(static_cast<const bf16*>(b.x[k]), b.begin(c, k), b.end(c, k))
                   : sum_sq_range(static_cast<const float*>(b.x[k]), b.begin(c, k), b.end(c, k));
  }
  const double total = block_sum(static_cast<double>(s));
  __shared__ bool last;
  if (threadIdx.x == 0) {
    g_sumsq_partial[blockIdx.x] = total;
    __threadfence();  // the slot is visible device-wide before the arrival is counted
    last = atomicAdd(&g_sumsq_arrived, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  double p = 0;  // thread i: slots i, i + blockDim.x, ... (L2 reads: other SMs wrote them)
  for (unsigned i = threadIdx.x; i < gridDim.x; i += blockDim.x) p += __ldcg(g_sumsq_partial + i);
  const double sum = block_sum(p);
  if (threadIdx.x == 0) {
    *acc += sum;
    g_sumsq_arrived = 0;
  }
}

template <class T>
__global__ void all_finite_kernel(const T* x, int64_t n, int* flag) {
  bool ok = true;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    ok = ok && isfinite(to_f(x[i]));
  if (!__all_sync(0xffffffffu, ok) && threadIdx.x % 32 == 0) *flag = 0;
}

template <class T>
__global__ void fill_kernel(T* x, float value, int64_t n) {
  const T v = from_f<T>(value);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = v;
}

__device__ __forceinline__ double load_any(const void* p, ScalarType t, int64_t i) {
  switch (t) {
    case ScalarType::F32: return static_cast<const float*>(p)[i];
    case ScalarType::F64: return static_cast<const double*>(p)[i];
    case ScalarType::BF16: return __bfloat162float(static_cast<const bf16*>(p)[i]);
    case ScalarType::F16: return __half2float(static_cast<const __half*>(p)[i]);
  }
  return 0;
}

__device__ __forceinline__ void store_any(void* p, ScalarType t, int64_t i, double v) {
  switch (t) {
    case ScalarType::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case ScalarType::F64: static_cast<double*>(p)[i] = v; break;
    // via float, as the CPU's float_to_bf16 (double → float → bf16, each to nearest even)
    case ScalarType::BF16: static_cast<bf16*>(p)[i] = __float2bfloat16_rn(static_cast<float>(v)); break;
    case ScalarType::F16: static_cast<__half*>(p)[i] = __float2half_rn(static_cast<float>(v)); break;
  }
}

__global__ void convert_kernel(ScalarType st, const void* src, ScalarType dt, void* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store_any(dst, dt, i, load_any(src, st, i));
}

__global__ void fill_any_kernel(ScalarType t, void* x, double value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store_any(x, t, i, value);
}

__global__ void broadcast_scalar_kernel(ScalarType t, void* out, int64_t n, ScalarType st, const void* scalar,
                                        double factor) {
  const double v = load_any(scalar, st, 0) * factor;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store_any(out, t, i, v);
}

constexpr int kThreads = 256;

}  // namespace

void binary(BinaryOp op, ScalarType t, const void* a, const int64_t* a_stride, const void* b,
            const int64_t* b_stride, void* out, const int64_t* shape, int ndim) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  if (n == 0) return;
  const int64_t* strides[2] = {a_stride, b_stride};
  const auto it = cpu::make_strided_iter<2>(shape, ndim, strides);
  BinaryGeom g{};
  g.ndim = it.ndim;
  for (int d = 0; d < it.ndim; ++d) {  // merged dims, outermost first
    g.shape[d] = it.shape[d];
    g.sa[d] = it.stride[0][d];
    g.sb[d] = it.stride[1][d];
  }
  const bool same = it.ndim == 1 && it.stride[0][0] == 1 && it.stride[1][0] == 1;
  dispatch_dtype(t, "binary", [&](auto tag) {
    using T = decltype(tag);
    if (same)
      binary_same_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
          op, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n);
    else
      binary_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
          op, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), g, n);
    PF_CUDA_CHECK_LAUNCH("binary");
  });
}

void scale(ScalarType t, const void* x, double s, void* out, int64_t n) {
  if (n == 0) return;
  dispatch_dtype(t, "scale", [&](auto tag) {
    using T = decltype(tag);
    scale_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
        static_cast<const T*>(x), static_cast<float>(s), static_cast<T*>(out), n);
    PF_CUDA_CHECK_LAUNCH("scale");
  });
}

void axpy(ScalarType t, void* y, double alpha, const void* x, int64_t n) {
  if (n == 0) return;
  dispatch_dtype(t, "axpy", [&](auto tag) {
    using T = decltype(tag);
    axpy_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
        static_cast<T*>(y), static_cast<float>(alpha), static_cast<const T*>(x), n);
    PF_CUDA_CHECK_LAUNCH("axpy");
  });
}

void gelu_forward(ScalarType t, const void* x, void* y, int64_t n) {
  if (n == 0) return;
  dispatch_dtype(t, "gelu_forward", [&](auto tag) {
    using T = decltype(tag);
    gelu_forward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(static_cast<const T*>(x),
                                                                                 static_cast<T*>(y), n);
    PF_CUDA_CHECK_LAUNCH("gelu_forward");
  });
}

void gelu_backward(ScalarType t, const void* x, const void* dy, void* dx, int64_t n) {
  if (n == 0) return;
  dispatch_dtype(t, "gelu_backward", [&](auto tag) {
    using T = decltype(tag);
    gelu_backward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
        static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx), n);
    PF_CUDA_CHECK_LAUNCH("gelu_backward");
  });
}

// Calls launch(batch, chunks) for each batch of up to kBatch of ts that has elements.
template <class F>
void for_each_batch(const std::vector<TensorRef>& ts, const char* what, F&& launch) {
  for (size_t first = 0; first < ts.size(); first += kBatch) {
    TensorBatch b{};
    int64_t chunks = 0;
    for (size_t i = first; i < ts.size() && b.count < kBatch; ++i) {
      PF_CHECK(ts[i].t == ScalarType::F32 || ts[i].t == ScalarType::BF16,
               what << ": no CUDA kernel for dtype " << scalar_type_name(ts[i].t)
                    << " (float32 or bfloat16 expected)");
      const int k = b.count++;
      b.x[k] = ts[i].x;
      b.n[k] = ts[i].n;
      b.bf16[k] = ts[i].t == ScalarType::BF16;
      b.chunk_start[k] = chunks;
      chunks += (ts[i].n + kChunkElems - 1) / kChunkElems;
    }
    b.chunk_start[b.count] = chunks;
    if (chunks > 0) launch(b, chunks);
  }
}

void sum_of_squares_many(const std::vector<TensorRef>& ts, double* acc) {
  for_each_batch(ts, "sum_of_squares", [&](const TensorBatch& b, int64_t chunks) {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, kSumSqMaxBlocks));
    sum_of_squares_kernel<<<grid, kThreads, 0, cur_stream()>>>(b, acc);
    PF_CUDA_CHECK_LAUNCH("sum_of_squares");
  });
}

void sum_of_squares(ScalarType t, const void* x, int64_t n, double* acc) {
  sum_of_squares_many({TensorRef{t, const_cast<void*>(x), n}}, acc);
}

void scale_many(const std::vector<TensorRef>& ts, double s, const double* s_dev) {
  for_each_batch(ts, "scale_many", [&](const TensorBatch& b, int64_t chunks) {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(chunks, 4096));
    scale_many_kernel<<<grid, kThreads, 0, cur_stream()>>>(b, static_cast<float>(s), s_dev);
    PF_CUDA_CHECK_LAUNCH("scale_many");
  });
}

void all_finite(ScalarType t, const void* x, int64_t n, int* flag) {
  if (n == 0) return;
  dispatch_dtype(t, "all_finite", [&](auto tag) {
    using T = decltype(tag);
    all_finite_kernel<T>
        <<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(static_cast<const T*>(x), n, flag);
    PF_CUDA_CHECK_LAUNCH("all_finite");
  });
}

void fill(ScalarType t, void* x, double value, int64_t n) {
  if (n == 0) return;
  if (t == ScalarType::F64 || t == ScalarType::F16) {  // rare on the GPU: the generic store
    fill_any_kernel<<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(t, x, value, n);
    PF_CUDA_CHECK_LAUNCH("fill");
    return;
  }
  dispatch_dtype(t, "fill", [&](auto tag) {
    using T = decltype(tag);
    fill_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(static_cast<T*>(x),
                                                                         static_cast<float>(value), n);
    PF_CUDA_CHECK_LAUNCH("fill");
  });
}

void convert(ScalarType st, const void* src, ScalarType dt, void* dst, int64_t n) {
  if (n == 0) return;
  convert_kernel<<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(st, src, dt, dst, n);
  PF_CUDA_CHECK_LAUNCH("convert");
}

void broadcast_scalar(ScalarType t, void* out, int64_t n, ScalarType st, const void* scalar, double factor) {
  if (n == 0) return;
  broadcast_scalar_kernel<<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(t, out, n, st, scalar,
                                                                                factor);
  PF_CUDA_CHECK_LAUNCH("broadcast_scalar");
}

}  // namespace pf::kernels::cuda
