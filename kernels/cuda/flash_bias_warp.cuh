// Warp-level building blocks of the flash-bias kernels: asynchronous copies into shared memory,
// the warp matrix product on the m16n8 accumulator fragment layout, and fragment stores.
//
// Accumulator fragment layout (that of mma.sync m16n8k16): a warp holds a 16 × 8 tile as
// float c[4] per lane; with g = lane / 4 and t = lane % 4,
//   c[0], c[1] = C[g][2t], C[g][2t+1]        c[2], c[3] = C[g+8][2t], C[g+8][2t+1].
// A warp tile of 16·MT × 8·NT is float acc[MT][NT][4]. The fp32 path computes exactly these
// elements with fused multiply-adds, so every kernel is written once for both paths.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error \
    "the flash-bias kernels need sm_80 or newer (cp.async, ldmatrix, bf16 mma.sync): set CMAKE_CUDA_ARCHITECTURES"
#endif

namespace pf::kernels::cuda::fb {

// ---- element conversion ----------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, __half>)
    return __half2float(x);
  else
    return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(x);
  else
    return __float2bfloat16_rn(x);
}

// Stores (x, y) at p[0], p[1] as one access (p must be aligned to two elements).
template <typename T>
__device__ __forceinline__ void store_pair(T* p, float x, float y) {
  if constexpr (std::is_same_v<T, float>)
    *reinterpret_cast<float2*>(p) = make_float2(x, y);
  else if constexpr (std::is_same_v<T, __half>)
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y);
  else
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}

template <typename T>
__device__ __forceinline__ float2 load_pair(const T* p) {
  if constexpr (std::is_same_v<T, float>)
    return *reinterpret_cast<const float2*>(p);
  else if constexpr (std::is_same_v<T, __half>)
    return __half22float2(*reinterpret_cast<const __half2*>(p));
  else
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// Sum / max over the four threads of a quad (lanes 4g … 4g + 3), which hold one fragment row.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// 2^x on the special-function unit (relative error < 2^-22; 2^-inf = 0; subnormal results flush to 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// (x, y) rounded to T and packed into one 32-bit register (x in the low half), as mma operands.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// ---- asynchronous copies ---------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1 (both addresses 16-byte aligned).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}

// 4 bytes global -> shared (both addresses 4-byte aligned).
__device__ __forceinline__ void cp_async_4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copies rows [r0, r0 + ROWS) of a (n_rows × D) row-major global matrix with row stride
// `row_stride` into a shared tile of pitch kPitch; rows past n_rows are zero-filled (so that a
// padded key or query never injects garbage, e.g. NaN · 0, into a product).
// Each thread owns one 16-byte column piece and walks rows kNThreads / (D / piece) apart, so the
// per-piece cost is one address add and one cp.async.
// g: row 0 of the matrix, 16-byte aligned, row_stride a multiple of 16 bytes.
template <typename T, int D, int ROWS, int kPitch, int kNThreads>
__device__ __forceinline__ void load_rows(T* s, const T* g, int64_t row_stride, int r0, int n_rows, int tid) {
  constexpr int kChunk = 16 / int(sizeof(T));
  constexpr int kChunksPerRow = D / kChunk;
  static_assert(kNThreads % kChunksPerRow == 0, "load_rows: threads must cover whole rows");
  constexpr int kRowsPerPass = kNThreads / kChunksPerRow;
  constexpr int kPasses = (ROWS + kRowsPerPass - 1) / kRowsPerPass;
  const int col = (tid % kChunksPerRow) * kChunk, rr = tid / kChunksPerRow;
  const T* src = g + int64_t(r0 + rr) * row_stride + col;
  const int64_t step = int64_t(kRowsPerPass) * row_stride;
  T* dst = s + rr * kPitch + col;
#pragma unroll
  for (int ps = 0; ps < kPasses; ++ps) {
    const int r = rr + ps * kRowsPerPass;
    if (ROWS % kRowsPerPass != 0 && r >= ROWS) break;
    if (r0 + r < n_rows)
      cp_async_16(dst + ps * kRowsPerPass * kPitch, src + ps * step);
    else
      *reinterpret_cast<uint4*>(dst + ps * kRowsPerPass * kPitch) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// ---- tensor-core primitives (sm_80+) ---------------------------------------------------------

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}

// c (16×8, fp32) += a (16×16) · b (16×8); operands as mma.sync m16n8k16 .row.col fragments.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma_16816: half or bfloat16 operands");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// ---- the warp product --------------------------------------------------------------------------

// acc (16·MT × 8·NT) += A (16·MT × K) · B (K × 8·NT), A and B in shared memory:
//   kAT = false: A[m][k] = sA[m·lda + k]        kAT = true: A[m][k] = sA[k·lda + m]
//   kBT = false: B[k][n] = sB[n·ldb + k]        kBT = true: B[k][n] = sB[k·ldb + n]
// For 16-bit T every row address ldmatrix sees is 16-byte aligned: callers keep the origins of
// sA and sB at multiples of 8 elements and the pitches at multiples of 8 elements.
template <int MT, int NT, int K, bool kAT, bool kBT, typename T>
__device__ __forceinline__ void warp_gemm(float (&acc)[MT][NT][4], const T* sA, int lda, const T* sB,
                                          int ldb) {
  const int lane = threadIdx.x & 31;
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      float a[MT][2], b[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int m = 16 * mt + g + 8 * hf;
          a[mt][hf] = kAT ? sA[k * lda + m] : sA[m * lda + k];
        }
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = 8 * nt + 2 * t + e;
          b[nt][e] = kBT ? sB[k * ldb + n] : sB[n * ldb + k];
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          acc[mt][nt][0] = fmaf(a[mt][0], b[nt][0], acc[mt][nt][0]);
          acc[mt][nt][1] = fmaf(a[mt][0], b[nt][1], acc[mt][nt][1]);
          acc[mt][nt][2] = fmaf(a[mt][1], b[nt][0], acc[mt][nt][2]);
          acc[mt][nt][3] = fmaf(a[mt][1], b[nt][1], acc[mt][nt][3]);
        }
    }
  } else {
    static_assert(K % 16 == 0, "warp_gemm: K must be a multiple of 16");
    // ldmatrix .x4: lanes 8i..8i+7 give the 8 row addresses of matrix i.
    const int lr = lane & 7, mi = lane >> 3;
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // matrices: 0 = (m 0-7, k 0-7), 1 = (m 8-15, k 0-7), 2 = (m 0-7, k 8-15), 3 = (m 8-15, k 8-15)
        if constexpr (!kAT) {
          ldsm_x4(a[mt], sA + (16 * mt + (mi & 1) * 8 + lr) * lda + 16 * kk + (mi >> 1) * 8);
        } else {
          ldsm_x4_t(a[mt], sA + (16 * kk + (mi >> 1) * 8 + lr) * lda + 16 * mt + (mi & 1) * 8);
        }
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        // matrices: 0 = (n 0-7, k 0-7), 1 = (n 0-7, k 8-15), 2 = (n 8-15, k 0-7), 3 = (n 8-15, k 8-15)
        uint32_t bf[4];
        if constexpr (!kBT) {
          ldsm_x4(bf, sB + (16 * np + (mi >> 1) * 8 + lr) * ldb + 16 * kk + (mi & 1) * 8);
        } else {
          ldsm_x4_t(bf, sB + (16 * kk + (mi & 1) * 8 + lr) * ldb + 16 * np + (mi >> 1) * 8);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<T>(acc[mt][2 * np], a[mt], bf[0], bf[1]);
          mma_16816<T>(acc[mt][2 * np + 1], a[mt], bf[2], bf[3]);
        }
      }
      if constexpr (NT % 2 == 1) {
        // the last n-tile alone: matrices 0 = (k 0-7), 1 = (k 8-15), addresses from lanes 0-15
        constexpr int n0 = 8 * (NT - 1);
        const int mk = (lane >> 3) & 1;
        uint32_t bf[2];
        if constexpr (!kBT)
          ldsm_x2(bf, sB + (n0 + lr) * ldb + 16 * kk + mk * 8);
        else
          ldsm_x2_t(bf, sB + (16 * kk + mk * 8 + lr) * ldb + n0);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) mma_16816<T>(acc[mt][NT - 1], a[mt], bf[0], bf[1]);
      }
    }
  }
}

// acc (16 × 8·NT) += A (16 × K) · B (K × 8·NT) with A already in registers as mma A fragments
// (a[kk] covers k = 16·kk .. 16·kk + 15) and B in shared memory laid out as in warp_gemm (kBT).
// 16-bit T only: this is how P (forward) and dS (dQ kernel) feed the tensor cores without a trip
// through shared memory.
template <int NT, int K, bool kBT, typename T>
__device__ __forceinline__ void warp_gemm_rA(float (&acc)[1][NT][4], const uint32_t (&a)[K / 16][4],
                                             const T* sB, int ldb) {
  static_assert(!std::is_same_v<T, float>, "warp_gemm_rA: tensor-core element types only");
  const int lane = threadIdx.x & 31, lr = lane & 7, mi = lane >> 3;
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      if constexpr (!kBT)
        ldsm_x4(bf, sB + (16 * np + (mi >> 1) * 8 + lr) * ldb + 16 * kk + (mi & 1) * 8);
      else
        ldsm_x4_t(bf, sB + (16 * kk + (mi & 1) * 8 + lr) * ldb + 16 * np + (mi >> 1) * 8);
      mma_16816<T>(acc[0][2 * np], a[kk], bf[0], bf[1]);
      mma_16816<T>(acc[0][2 * np + 1], a[kk], bf[2], bf[3]);
    }
    if constexpr (NT % 2 == 1) {
      constexpr int n0 = 8 * (NT - 1);
      const int mk = (lane >> 3) & 1;
      uint32_t bf[2];
      if constexpr (!kBT)
        ldsm_x2(bf, sB + (n0 + lr) * ldb + 16 * kk + mk * 8);
      else
        ldsm_x2_t(bf, sB + (16 * kk + mk * 8 + lr) * ldb + n0);
      mma_16816<T>(acc[0][NT - 1], a[kk], bf[0], bf[1]);
    }
  }
}

// A accumulator tile (16 × 8·NT, NT even) as A fragments of the next product (k = its columns),
// rounded to T: the m16n8 accumulator layout of n-tiles 2kk, 2kk+1 is the m16n8k16 A layout.
template <int NT, typename T>
__device__ __forceinline__ void frag_to_A(const float (&c)[1][NT][4], uint32_t (&a)[NT / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    a[kk][0] = pack2<T>(c[0][2 * kk][0], c[0][2 * kk][1]);          // row g,     k 2t..
    a[kk][1] = pack2<T>(c[0][2 * kk][2], c[0][2 * kk][3]);          // row g + 8, k 2t..
    a[kk][2] = pack2<T>(c[0][2 * kk + 1][0], c[0][2 * kk + 1][1]);  // row g,     k 2t + 8..
    a[kk][3] = pack2<T>(c[0][2 * kk + 1][2], c[0][2 * kk + 1][3]);  // row g + 8, k 2t + 8..
  }
}

// Writes a warp's accumulator tile (converted to T) to shared memory at s (row-major, pitch lds).
template <int MT, int NT, typename T>
__device__ __forceinline__ void store_frag(const float (&acc)[MT][NT][4], T* s, int lds) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int r = 16 * mt + g, c = 8 * nt + 2 * t;
      store_pair(s + r * lds + c, acc[mt][nt][0], acc[mt][nt][1]);
      store_pair(s + (r + 8) * lds + c, acc[mt][nt][2], acc[mt][nt][3]);
    }
}

template <int MT, int NT>
__device__ __forceinline__ void zero_frag(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

}  // namespace pf::kernels::cuda::fb
