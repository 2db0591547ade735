// The Hopper building blocks of kernels/cuda/sm90.cuh, each checked alone against a CPU result on
// random data, with the tile shapes and addressing the Hopper flash-bias forward uses:
// - TMA + mbarrier: a 128 × (128-byte) tile of a 4-d tensor map with a 128-byte swizzle (the
//   bias tile), read back element by element through swizzled_offset: must equal the source,
//   with zeros past the tensor's edge.
// - wgmma ss: S (64 × N) = Q (64 × D) · K (N × D)ᵀ, both K-major tiles written by TMA (64-byte
//   swizzle for D = 32, 128-byte panels otherwise), D / 16 K-steps (sm90::wgmma_ss_kmajor).
// - wgmma rs: O (64 × D) = P (64 × BN) · V (BN × D), P from registers in the accumulator layout,
//   V an MN-major tile written by TMA.
// The backward's parts:
// - wgmma ss_mn: dQ (64 × N) = dS (64 × 128) · K[:, c0 … c0 + N), K MN-major and c0 inside a
//   swizzle panel (a warpgroup's part of D).
// - ldmatrix_x4_trans / stmatrix_x4_trans through trans_x4_offset, and a TMA store: a tile read
//   as fragments of its transpose, stored back and out; both must equal the source exactly.
// - a bulk copy, a TMA reduce-add of an fp32 tile clipped at the tensor's edge, and
//   red_add_f32x2.
// Skips where no compute capability 9.0 device is present.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cuda/sm90.cuh"
#include "kernels/cuda/sm90_wgmma.cuh"
#include "kernels/cuda/tma.h"

namespace {

namespace sm90 = pf::kernels::cuda::sm90;

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

bool have_sm90() {
  int n = 0, major = 0, minor = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return major == 9 && minor == 0;
}

__device__ char* aligned_smem(char* raw) { return raw + ((1024 - (sm90::smem_addr(raw) & 1023)) & 1023); }

// One mbarrier expecting one arrival (plus transaction bytes), initialised by thread 0 and
// visible to the whole block and the TMA unit.
__device__ void init_barrier(uint64_t* bar) {
  if (threadIdx.x == 0) {
    sm90::mbar_init(bar, 1);
    sm90::fence_barrier_init();
  }
  __syncthreads();
}

// ---- TMA tile + swizzled reads -------------------------------------------------------------------

// One 128-row × 64-half box at (c0, c1) of a (rows, cols) fp16 tensor, copied back out through
// swizzled_offset into out (128 × 64).
__global__ void tma_tile_kernel(const __grid_constant__ CUtensorMap map, int c0, int c1, __half* out) {
  extern __shared__ char raw[];
  char* tile = aligned_smem(raw);
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, 128 * 128);
    sm90::tma_load_4d(tile, &map, &bar, c0, c1, 0, 0);
  }
  sm90::mbar_wait(&bar, 0);
  for (int e = threadIdx.x; e < 128 * 64; e += blockDim.x) {
    const int r = e / 64, c = e % 64;
    out[e] = *reinterpret_cast<const __half*>(tile + sm90::swizzled_offset<128>(r, 2 * c));
  }
}

TEST(Sm90Parts, TmaTileWithSwizzleReadsBackTheSource) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  const int rows = 200, cols = 100, ld = 104;  // row pitch 208 bytes (a 16-byte multiple)
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<__half> src(size_t(rows) * ld);
  for (auto& x : src) x = __float2half(u(rng));
  __half *d_src = nullptr, *d_out = nullptr;
  CUDA_OK(cudaMalloc(&d_src, src.size() * 2));
  CUDA_OK(cudaMalloc(&d_out, 128 * 64 * 2));
  CUDA_OK(cudaMemcpy(d_src, src.data(), src.size() * 2, cudaMemcpyHostToDevice));
  const uint64_t dims[4] = {uint64_t(cols), uint64_t(rows), 1, 1};
  const uint64_t strides[3] = {uint64_t(ld) * 2, uint64_t(ld) * 2 * rows, uint64_t(ld) * 2 * rows};
  const uint32_t box[4] = {64, 128, 1, 1};
  const CUtensorMap map = pf::kernels::cuda::make_tensor_map_4d(d_src, 2, false, dims, strides, box, 128);
  CUDA_OK(
      cudaFuncSetAttribute(tma_tile_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 128 * 128 + 1024));
  for (auto [c0, c1] : {std::pair{0, 0}, std::pair{64, 128}, std::pair{40, 100}}) {
    CUDA_OK(cudaMemset(d_out, 0xff, 128 * 64 * 2));  // NaN poison
    tma_tile_kernel<<<1, 128, 128 * 128 + 1024>>>(map, c0, c1, d_out);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<__half> out(128 * 64);
    CUDA_OK(cudaMemcpy(out.data(), d_out, out.size() * 2, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int r = 0; r < 128; ++r)
      for (int c = 0; c < 64; ++c) {
        const int gr = c1 + r, gc = c0 + c;
        const float want = gr < rows && gc < cols ? __half2float(src[size_t(gr) * ld + gc]) : 0.f;
        bad += __half2float(out[r * 64 + c]) != want;
      }
    EXPECT_EQ(bad, 0) << "box at (" << c0 << ", " << c1 << ")";
  }
  cudaFree(d_src);
  cudaFree(d_out);
}

// ---- wgmma ss: S = Q Kᵀ ----------------------------------------------------------------------------

// q (64 × D) and k (N × D) row-major fp16 (as (B, N, H, D) with B = H = 1); s (64 × N) fp32.
template <int D, int N>
__global__ void __launch_bounds__(128)
    wgmma_ss_kernel(const __grid_constant__ CUtensorMap qmap, const __grid_constant__ CUtensorMap kmap,
                    float* s_out) {
  constexpr int RB = 2 * D < 128 ? 2 * D : 128, kPanels = 2 * D / RB;
  extern __shared__ char raw[];
  char* sQ = aligned_smem(raw);
  char* sK = sQ + 64 * D * 2;
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, (64 + N) * D * 2);
    for (int p = 0; p < kPanels; ++p) {
      sm90::tma_load_4d(sQ + p * 64 * RB, &qmap, &bar, p * RB / 2, 0, 0, 0);
      sm90::tma_load_4d(sK + p * N * RB, &kmap, &bar, p * RB / 2, 0, 0, 0);
    }
  }
  sm90::mbar_wait(&bar, 0);
  float s[N / 2];
  sm90::wgmma_fence();
  sm90::wgmma_ss_kmajor<N, false, RB, D>(s, sQ, 64 * RB, sK, N * RB);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(s);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e)
      s_out[(16 * warp + g + 8 * (e / 2)) * N + 8 * j + 2 * t + e % 2] = s[4 * j + e];
}

CUtensorMap rows_map(const __half* p, int rows, int D, int box_rows) {
  const int RB = 2 * D < 128 ? 2 * D : 128;
  const uint64_t dims[4] = {uint64_t(D), uint64_t(rows), 1, 1};
  const uint64_t strides[3] = {uint64_t(D) * 2, uint64_t(D) * 2 * rows, uint64_t(D) * 2 * rows};
  const uint32_t box[4] = {uint32_t(RB / 2), uint32_t(box_rows), 1, 1};
  return pf::kernels::cuda::make_tensor_map_4d(p, 2, false, dims, strides, box, RB);
}

std::vector<__half> random_half(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<__half> v(n);
  for (auto& x : v) x = __float2half(u(rng));
  return v;
}

// Two random fp16 matrices a (m × k) and b, uploaded; launch(d_a, d_b, d_c) fills c (m × n, fp32,
// poisoned first); returns ‖c − a·B‖ / ‖a·B‖ with B(kk, j) = b_at(b, kk, j) in float64.
template <typename Launch, typename BAt>
double product_error(int m, int k, int n, size_t b_elems, Launch&& launch, BAt&& b_at) {
  std::mt19937 rng(std::random_device{}());
  const std::vector<__half> a = random_half(size_t(m) * k, rng), b = random_half(b_elems, rng);
  __half *d_a = nullptr, *d_b = nullptr;
  float* d_c = nullptr;
  if (cudaMalloc(&d_a, a.size() * 2) != cudaSuccess || cudaMalloc(&d_b, b.size() * 2) != cudaSuccess ||
      cudaMalloc(&d_c, size_t(m) * n * 4) != cudaSuccess)
    return INFINITY;
  cudaMemcpy(d_a, a.data(), a.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(d_b, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
  cudaMemset(d_c, 0xff, size_t(m) * n * 4);  // NaN poison
  launch(d_a, d_b, d_c);
  std::vector<float> c(size_t(m) * n);
  const bool ok = cudaGetLastError() == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess &&
                  cudaMemcpy(c.data(), d_c, c.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(d_a);
  cudaFree(d_b);
  cudaFree(d_c);
  if (!ok) return INFINITY;
  double num = 0, den = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double ref = 0;
      for (int kk = 0; kk < k; ++kk)
        ref += double(__half2float(a[size_t(i) * k + kk])) * __half2float(b_at(b, kk, j));
      const double x = c[size_t(i) * n + j];
      num += (x - ref) * (x - ref);  // NaN (unwritten) makes the error NaN: fails the bound
      den += ref * ref;
    }
  return std::sqrt(num / den);
}

template <int D, int N>
void check_ss() {
  const int smem = (64 + N) * D * 2 + 1024;
  ASSERT_EQ(cudaFuncSetAttribute(wgmma_ss_kernel<D, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
            cudaSuccess);
  const double err = product_error(
      64, D, N, size_t(N) * D,
      [&](__half* q, __half* k, float* s) {
        wgmma_ss_kernel<D, N><<<1, 128, smem>>>(rows_map(q, 64, D, 64), rows_map(k, N, D, N), s);
      },
      [](const std::vector<__half>& k, int d, int j) { return k[size_t(j) * D + d]; });  // Kᵀ
  // fp16 products are exact in fp32; the fp32 sums of D terms: ~1e-7 relative
  EXPECT_LE(err, 1e-5) << "D = " << D << ", N = " << N;
}

TEST(Sm90Parts, WgmmaQKMatchesCpu) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  check_ss<32, 128>();
  check_ss<64, 128>();
  check_ss<128, 64>();
}

// ---- wgmma rs: O = P V ------------------------------------------------------------------------------

// p (64 × BN) fp16 row-major, v (BN × D) fp16 row-major; o (64 × D) fp32.
template <int D, int BN>
__global__ void __launch_bounds__(128)
    wgmma_rs_kernel(const __half* p, const __grid_constant__ CUtensorMap vmap, float* o_out) {
  constexpr int RB = 2 * D < 128 ? 2 * D : 128, kPanels = 2 * D / RB;
  extern __shared__ char raw[];
  char* sV = aligned_smem(raw);
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, BN * D * 2);
    for (int pn = 0; pn < kPanels; ++pn)
      sm90::tma_load_4d(sV + pn * BN * RB, &vmap, &bar, pn * RB / 2, 0, 0, 0);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // A fragments: k-chunk kc, registers e = 0..3: rows g / g + 8, columns 16kc + 2t (+ 8)
  uint32_t pa[BN / 16][4];
  for (int kc = 0; kc < BN / 16; ++kc)
    for (int e = 0; e < 4; ++e) {
      const int r = 16 * warp + g + 8 * (e % 2), c = 16 * kc + 2 * t + 8 * (e / 2);
      __half2 h = __halves2half2(p[r * BN + c], p[r * BN + c + 1]);
      pa[kc][e] = *reinterpret_cast<uint32_t*>(&h);
    }
  sm90::mbar_wait(&bar, 0);
  float o[D / 2];
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  sm90::fence_regs(o);
  sm90::wgmma_fence();
#pragma unroll
  for (int kc = 0; kc < BN / 16; ++kc)
    sm90::Wgmma<D, false>::rs(o, pa[kc], sm90::make_desc<RB>(sV + kc * 16 * RB, BN * RB));
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(o);
  for (int j = 0; j < D / 8; ++j)
    for (int e = 0; e < 4; ++e)
      o_out[(16 * warp + g + 8 * (e / 2)) * D + 8 * j + 2 * t + e % 2] = o[4 * j + e];
}

template <int D, int BN>
void check_rs() {
  const int smem = BN * D * 2 + 1024;
  ASSERT_EQ(cudaFuncSetAttribute(wgmma_rs_kernel<D, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
            cudaSuccess);
  const double err = product_error(
      64, BN, D, size_t(BN) * D,
      [&](__half* p, __half* v, float* o) {
        wgmma_rs_kernel<D, BN><<<1, 128, smem>>>(p, rows_map(v, BN, D, BN), o);
      },
      [](const std::vector<__half>& v, int j, int d) { return v[size_t(j) * D + d]; });
  EXPECT_LE(err, 1e-5) << "D = " << D << ", BN = " << BN;
}

TEST(Sm90Parts, WgmmaPVMatchesCpu) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  check_rs<32, 128>();
  check_rs<64, 128>();
  check_rs<128, 64>();
}

// ---- wgmma ss_mn at a column offset: dQ = dS K[:, c0 …] --------------------------------------------

// ds (64 × 128) row-major (K-major A: two 128-byte panels of 64 columns), k (128 × D) row-major
// (MN-major B: the columns c0 … c0 + N − 1, c0 inside a swizzle panel, as the Hopper backward's dQ
// product takes a warpgroup's part of D); dq (64 × N) fp32.
template <int D, int N>
__global__ void __launch_bounds__(128)
    wgmma_ss_mn_kernel(const __grid_constant__ CUtensorMap dsmap, const __grid_constant__ CUtensorMap kmap,
                       int c0, float* out) {
  constexpr int RB = 2 * D < 128 ? 2 * D : 128, kPanels = 2 * D / RB;
  extern __shared__ char raw[];
  char* sDs = aligned_smem(raw);
  char* sK = sDs + 64 * 128 * 2;
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, (64 + D) * 128 * 2);
    for (int p = 0; p < 2; ++p) sm90::tma_load_4d(sDs + p * 64 * 128, &dsmap, &bar, 64 * p, 0, 0, 0);
    for (int p = 0; p < kPanels; ++p) sm90::tma_load_4d(sK + p * 128 * RB, &kmap, &bar, p * RB / 2, 0, 0, 0);
  }
  sm90::mbar_wait(&bar, 0);
  const char* sKc = sK + (2 * c0 / RB) * 128 * RB + (2 * c0) % RB;
  float c[N / 2];
  sm90::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    const int byte = ks * 32;
    const uint64_t da = sm90::desc_advance(sm90::make_desc<128>(sDs + (byte / 128) * 64 * 128), byte % 128);
    sm90::Wgmma<N, false>::ss_mn(c, da, sm90::make_desc<RB>(sKc + ks * 16 * RB, 128 * RB), ks > 0);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) out[(16 * warp + g + 8 * (e / 2)) * N + 8 * j + 2 * t + e % 2] = c[4 * j + e];
}

template <int D, int N>
void check_ss_mn(int c0) {
  const int smem = (64 + D) * 128 * 2 + 1024;
  ASSERT_EQ(cudaFuncSetAttribute(wgmma_ss_mn_kernel<D, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
            cudaSuccess);
  const double err = product_error(
      64, 128, N, size_t(128) * D,
      [&](__half* ds, __half* k, float* out) {
        wgmma_ss_mn_kernel<D, N>
            <<<1, 128, smem>>>(rows_map(ds, 64, 128, 64), rows_map(k, 128, D, 128), c0, out);
      },
      [&](const std::vector<__half>& k, int kk, int j) { return k[size_t(kk) * D + c0 + j]; });
  EXPECT_LE(err, 1e-5) << "D = " << D << ", N = " << N << ", first column " << c0;
}

TEST(Sm90Parts, WgmmaDsKAtAColumnOffsetMatchesCpu) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  check_ss_mn<32, 16>(0);
  check_ss_mn<32, 16>(16);   // 32 bytes into a 64-byte swizzle row
  check_ss_mn<64, 32>(32);   // 64 bytes into a 128-byte row
  check_ss_mn<128, 32>(96);  // the second panel, 64 bytes in
}

// ---- ldmatrix / stmatrix transposed, TMA store ---------------------------------------------------------

// x (64 × 128 fp16, a TMA tile of two 128-byte panels). Every 16 × 16 block of the transposed
// matrix (rows = the tile's columns) goes through ldmatrix_x4_trans into fragments, which are
// written out as xt (128 × 64, fp32) and stored back transposed with stmatrix_x4_trans into a
// second tile, which TMA stores to y (64 × 128): xt = xᵀ and y = x.
__global__ void __launch_bounds__(128)
    transpose_fragments_kernel(const __grid_constant__ CUtensorMap xmap,
                               const __grid_constant__ CUtensorMap ymap, float* xt) {
  extern __shared__ char raw[];
  char* sX = aligned_smem(raw);
  char* sY = sX + 64 * 128 * 2;
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, 64 * 128 * 2);
    for (int p = 0; p < 2; ++p) sm90::tma_load_4d(sX + p * 64 * 128, &xmap, &bar, 64 * p, 0, 0, 0);
  }
  sm90::mbar_wait(&bar, 0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int half = 0; half < 2; ++half) {
    const int r0 = 64 * half + 16 * warp;  // fragment rows = columns of x
    for (int c0 = 0; c0 < 64; c0 += 16) {
      uint32_t r[4];
      sm90::ldmatrix_x4_trans(r, sX + sm90::trans_x4_offset<64>(lane, r0, c0));
      for (int i = 0; i < 4; ++i) {
        const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&r[i]));
        const int row = r0 + g + 8 * (i % 2), col = c0 + 8 * (i / 2) + 2 * t;
        xt[row * 64 + col] = v.x;
        xt[row * 64 + col + 1] = v.y;
      }
      sm90::stmatrix_x4_trans(sY + sm90::trans_x4_offset<64>(lane, r0, c0), r);
    }
  }
  sm90::fence_proxy_async_smem();
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int p = 0; p < 2; ++p) sm90::tma_store_4d(&ymap, sY + p * 64 * 128, 64 * p, 0, 0, 0);
    sm90::bulk_commit();
    sm90::bulk_wait<0>();
  }
}

TEST(Sm90Parts, LdmatrixStmatrixTransposeAndTmaStoreRoundTrip) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  std::mt19937 rng(std::random_device{}());
  const std::vector<__half> x = random_half(64 * 128, rng);
  __half *d_x = nullptr, *d_y = nullptr;
  float* d_xt = nullptr;
  CUDA_OK(cudaMalloc(&d_x, x.size() * 2));
  CUDA_OK(cudaMalloc(&d_y, x.size() * 2));
  CUDA_OK(cudaMalloc(&d_xt, x.size() * 4));
  CUDA_OK(cudaMemcpy(d_x, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(d_y, 0xff, x.size() * 2));  // NaN poison
  CUDA_OK(cudaMemset(d_xt, 0xff, x.size() * 4));
  const int smem = 2 * 64 * 128 * 2 + 1024;
  CUDA_OK(
      cudaFuncSetAttribute(transpose_fragments_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  transpose_fragments_kernel<<<1, 128, smem>>>(rows_map(d_x, 64, 128, 64), rows_map(d_y, 64, 128, 64), d_xt);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<__half> y(x.size());
  std::vector<float> xt(x.size());
  CUDA_OK(cudaMemcpy(y.data(), d_y, y.size() * 2, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(xt.data(), d_xt, xt.size() * 4, cudaMemcpyDeviceToHost));
  int bad_t = 0, bad_y = 0;
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 128; ++j) {
      const float want = __half2float(x[i * 128 + j]);
      bad_t += xt[j * 64 + i] != want;
      bad_y += __half2float(y[i * 128 + j]) != want;
    }
  EXPECT_EQ(bad_t, 0) << "fragments of the transposed tile (ldmatrix_x4_trans)";
  EXPECT_EQ(bad_y, 0) << "the tile stored back (stmatrix_x4_trans, TMA store)";
  cudaFree(d_x);
  cudaFree(d_y);
  cudaFree(d_xt);
}

// ---- bulk copy, TMA reduce-add, vector reduction ------------------------------------------------------

// src (64 floats) by one bulk copy; a 64 × 32 fp32 tile v(r, c) = src[r]·(c + 1) added twice by
// TMA reduce-add into acc (rows × cols, row pitch ld) at (c0, r0); and every thread adds
// (tid, −tid) into pair[tid] with red_add_f32x2.
__global__ void __launch_bounds__(128)
    bulk_reduce_kernel(const float* src, const __grid_constant__ CUtensorMap accmap, int c0, int r0,
                       float* pair) {
  extern __shared__ char raw[];
  char* sTile = aligned_smem(raw);
  float* sSrc = reinterpret_cast<float*>(sTile + 64 * 128);
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, 64 * 4);
    sm90::bulk_load(sSrc, src, 64 * 4, &bar);
  }
  sm90::mbar_wait(&bar, 0);
  for (int e = threadIdx.x; e < 64 * 32; e += blockDim.x) {
    const int r = e / 32, c = e % 32;
    *reinterpret_cast<float*>(sTile + sm90::panel_offset<64>(r, 4 * c)) = sSrc[r] * float(c + 1);
  }
  sm90::fence_proxy_async_smem();
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int rep = 0; rep < 2; ++rep) {
      sm90::tma_reduce_add_4d(&accmap, sTile, c0, r0, 0, 0);
      sm90::bulk_commit();
    }
    sm90::bulk_wait<0>();
  }
  sm90::red_add_f32x2(pair + 2 * threadIdx.x, float(threadIdx.x), -float(threadIdx.x));
}

TEST(Sm90Parts, BulkCopyReduceAddAndVectorReduction) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  const int rows = 60, cols = 45, ld = 48, c0 = 8, r0 = 3;  // the box's last rows fall outside
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(0.5f, 2.f);
  std::vector<float> src(64), acc(size_t(rows) * ld), pair(256);
  for (auto& v : src) v = u(rng);
  for (auto& v : acc) v = u(rng);
  for (auto& v : pair) v = u(rng);
  float *d_src = nullptr, *d_acc = nullptr, *d_pair = nullptr;
  CUDA_OK(cudaMalloc(&d_src, src.size() * 4));
  CUDA_OK(cudaMalloc(&d_acc, acc.size() * 4));
  CUDA_OK(cudaMalloc(&d_pair, pair.size() * 4));
  CUDA_OK(cudaMemcpy(d_src, src.data(), src.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_acc, acc.data(), acc.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(d_pair, pair.data(), pair.size() * 4, cudaMemcpyHostToDevice));
  const uint64_t dims[4] = {uint64_t(cols), uint64_t(rows), 1, 1};
  const uint64_t strides[3] = {uint64_t(ld) * 4, uint64_t(ld) * 4 * rows, uint64_t(ld) * 4 * rows};
  const uint32_t box[4] = {32, 64, 1, 1};
  const CUtensorMap map = pf::kernels::cuda::make_tensor_map_4d(d_acc, 4, false, dims, strides, box, 128);
  const int smem = 64 * 128 + 256 + 1024;
  bulk_reduce_kernel<<<1, 128, smem>>>(d_src, map, c0, r0, d_pair);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> acc2(acc.size()), pair2(pair.size());
  CUDA_OK(cudaMemcpy(acc2.data(), d_acc, acc2.size() * 4, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(pair2.data(), d_pair, pair2.size() * 4, cudaMemcpyDeviceToHost));
  // two fp32 additions per element: equal to the host's within 2 units of fp32 rounding
  int bad = 0;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < ld; ++j) {
      const bool in_box = i >= r0 && i < r0 + 64 && j >= c0 && j < c0 + 32 && j < cols;
      const float v = in_box ? src[i - r0] * float(j - c0 + 1) : 0.f;
      const float want = (acc[size_t(i) * ld + j] + v) + v;
      bad += std::fabs(acc2[size_t(i) * ld + j] - want) > 2.4e-7f * std::fabs(want);
    }
  EXPECT_EQ(bad, 0) << "TMA reduce-add of the tile (bulk copy of its row values)";
  int bad_pair = 0;
  for (int i = 0; i < 128; ++i)
    bad_pair += pair2[2 * i] != pair[2 * i] + float(i) || pair2[2 * i + 1] != pair[2 * i + 1] - float(i);
  EXPECT_EQ(bad_pair, 0) << "red_add_f32x2";
  cudaFree(d_src);
  cudaFree(d_acc);
  cudaFree(d_pair);
}

}  // namespace
