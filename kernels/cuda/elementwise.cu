#include "kernels/cuda/elementwise.h"

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

template <class T>
__global__ void sum_of_squares_kernel(const T* x, int64_t n, double* acc) {
  float s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = to_f(x[i]);
    s += v * v;
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
  for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x) p += __ldcg(g_sumsq_partial + b);
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

__global__ void broadcast_scalar_kernel(ScalarType t, void* out, int64_t n, ScalarType st,
                                        const void* scalar, double factor) {
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
    gelu_forward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
        static_cast<const T*>(x), static_cast<T*>(y), n);
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

void sum_of_squares(ScalarType t, const void* x, int64_t n, double* acc) {
  if (n == 0) return;
  dispatch_dtype(t, "sum_of_squares", [&](auto tag) {
    using T = decltype(tag);
    sum_of_squares_kernel<T><<<std::min(grid_for(n, kThreads), kSumSqMaxBlocks), kThreads, 0, cur_stream()>>>(
        static_cast<const T*>(x), n, acc);
    PF_CUDA_CHECK_LAUNCH("sum_of_squares");
  });
}

void all_finite(ScalarType t, const void* x, int64_t n, int* flag) {
  if (n == 0) return;
  dispatch_dtype(t, "all_finite", [&](auto tag) {
    using T = decltype(tag);
    all_finite_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
        static_cast<const T*>(x), n, flag);
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
    fill_kernel<T><<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(
        static_cast<T*>(x), static_cast<float>(value), n);
    PF_CUDA_CHECK_LAUNCH("fill");
  });
}

void convert(ScalarType st, const void* src, ScalarType dt, void* dst, int64_t n) {
  if (n == 0) return;
  convert_kernel<<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(st, src, dt, dst, n);
  PF_CUDA_CHECK_LAUNCH("convert");
}

void broadcast_scalar(ScalarType t, void* out, int64_t n, ScalarType st, const void* scalar,
                      double factor) {
  if (n == 0) return;
  broadcast_scalar_kernel<<<grid_for(n, kThreads), kThreads, 0, cur_stream()>>>(t, out, n, st,
                                                                                 scalar, factor);
  PF_CUDA_CHECK_LAUNCH("broadcast_scalar");
}

}  // namespace pf::kernels::cuda
