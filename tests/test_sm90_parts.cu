// The Hopper building blocks of kernels/cuda/sm90.cuh, each checked alone against a CPU result on
// random data, with the tile shapes and addressing the Hopper flash-bias forward uses:
// - TMA + mbarrier: a 128 × (128-byte) tile of a 4-d tensor map with a 128-byte swizzle (the
//   bias tile), read back element by element through swizzled_offset: must equal the source,
//   with zeros past the tensor's edge.
// - wgmma ss: S (64 × N) = Q (64 × D) · K (N × D)ᵀ, both K-major tiles written by TMA (64-byte
//   swizzle for D = 32, 128-byte panels otherwise), D / 16 K-steps through desc_advance.
// - wgmma rs: O (64 × D) = P (64 × BN) · V (BN × D), P from registers in the accumulator layout,
//   V an MN-major tile written by TMA.
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

__device__ char* aligned_smem(char* raw) {
  return raw + ((1024 - (sm90::smem_addr(raw) & 1023)) & 1023);
}

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
  CUDA_OK(cudaFuncSetAttribute(tma_tile_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 128 * 128 + 1024));
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
__global__ void __launch_bounds__(128) wgmma_ss_kernel(const __grid_constant__ CUtensorMap qmap,
                                                       const __grid_constant__ CUtensorMap kmap, float* s_out) {
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
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const int byte = ks * 32, panel = byte / RB, off = byte % RB;
    const uint64_t da = sm90::desc_advance(sm90::make_desc<RB>(sQ + panel * 64 * RB), off);
    const uint64_t db = sm90::desc_advance(sm90::make_desc<RB>(sK + panel * N * RB), off);
    sm90::Wgmma<N, false>::ss(s, da, db, ks > 0);
  }
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_regs(s);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) s_out[(16 * warp + g + 8 * (e / 2)) * N + 8 * j + 2 * t + e % 2] = s[4 * j + e];
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
      for (int kk = 0; kk < k; ++kk) ref += double(__half2float(a[size_t(i) * k + kk])) * __half2float(b_at(b, kk, j));
      const double x = c[size_t(i) * n + j];
      num += (x - ref) * (x - ref);  // NaN (unwritten) makes the error NaN: fails the bound
      den += ref * ref;
    }
  return std::sqrt(num / den);
}

template <int D, int N>
void check_ss() {
  const int smem = (64 + N) * D * 2 + 1024;
  ASSERT_EQ(cudaFuncSetAttribute(wgmma_ss_kernel<D, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), cudaSuccess);
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
__global__ void __launch_bounds__(128) wgmma_rs_kernel(const __half* p, const __grid_constant__ CUtensorMap vmap,
                                                       float* o_out) {
  constexpr int RB = 2 * D < 128 ? 2 * D : 128, kPanels = 2 * D / RB;
  extern __shared__ char raw[];
  char* sV = aligned_smem(raw);
  __shared__ uint64_t bar;
  init_barrier(&bar);
  if (threadIdx.x == 0) {
    sm90::mbar_arrive_expect_tx(&bar, BN * D * 2);
    for (int pn = 0; pn < kPanels; ++pn) sm90::tma_load_4d(sV + pn * BN * RB, &vmap, &bar, pn * RB / 2, 0, 0, 0);
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
    for (int e = 0; e < 4; ++e) o_out[(16 * warp + g + 8 * (e / 2)) * D + 8 * j + 2 * t + e % 2] = o[4 * j + e];
}

template <int D, int BN>
void check_rs() {
  const int smem = BN * D * 2 + 1024;
  ASSERT_EQ(cudaFuncSetAttribute(wgmma_rs_kernel<D, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), cudaSuccess);
  const double err = product_error(
      64, BN, D, size_t(BN) * D,
      [&](__half* p, __half* v, float* o) { wgmma_rs_kernel<D, BN><<<1, 128, smem>>>(p, rows_map(v, BN, D, BN), o); },
      [](const std::vector<__half>& v, int j, int d) { return v[size_t(j) * D + d]; });
  EXPECT_LE(err, 1e-5) << "D = " << D << ", BN = " << BN;
}

TEST(Sm90Parts, WgmmaPVMatchesCpu) {
  if (!have_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";
  check_rs<32, 128>();
  check_rs<64, 128>();
  check_rs<128, 64>();
}

}  // namespace
