// Hopper (sm_90a) building blocks as thin PTX wrappers: mbarriers, the tensor-memory accelerator
// (TMA: cp.async.bulk.tensor), warpgroup matrix multiply (wgmma) and its shared-memory matrix
// descriptors, and register re-balancing between warpgroups (setmaxnreg).
//
// Only translation units compiled for sm_90a include this (kernels/cuda/*_sm90a.cu and the
// tests of these parts); the portable kernels never see it.
//
// Shared-memory tiles are written by TMA with a 64- or 128-byte swizzle and read by wgmma (through
// a descriptor of the same swizzle) or by plain loads (through swizzled_offset). A tile of R rows
// whose rows are `kSwizzle` bytes (one swizzle atom wide) is stored row after row; inside each
// group of 8 rows, the 16-byte chunk c of row r is stored at chunk c ^ (r % 8) (128 B) or
// c ^ ((r / 2) % 4) (64 B, the pattern repeats every 512 bytes). Tiles start at 1024-byte
// boundaries so the pattern's phase is the address's.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/sm90_wgmma.cuh"

namespace pf::kernels::cuda::sm90 {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -----------------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA) before first use.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival that also announces `bytes` of TMA transactions for the current phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

// Waits until the phase with parity `parity` has completed (a fresh barrier counts its
// "previous" phase, parity 1, as completed).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// ---- TMA ----------------------------------------------------------------------------------------

__device__ __forceinline__ void tma_prefetch_descriptor(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
}

// One box of a 4-d tensor map at coordinates (c0 innermost … c3) into shared memory; completes
// as transaction bytes on `bar`. Out-of-range elements are filled with zeros.
__device__ __forceinline__ void tma_load_4d(void* smem_dst, const void* tmap, uint64_t* bar, int c0, int c1,
                                            int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];" ::"r"(smem_addr(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(smem_addr(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// A contiguous copy of `bytes` (multiple of 16; both addresses 16-byte aligned) from global to
// shared memory; completes as transaction bytes on `bar`.
__device__ __forceinline__ void bulk_load(void* smem_dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          smem_addr(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}

// One box of shared memory (laid out as the tensor map's box, swizzle included) into a 4-d tensor
// map at coordinates (c0 … c3): stored, or added element-wise in the global memory's L2
// (reduce_add; fp32 and the 16-bit float types). Elements outside the tensor are not written.
// Both are bulk asynchronous groups: bulk_commit() closes a group, bulk_wait_read<N>() waits until
// at most N groups still read shared memory (their sources may then be overwritten).
__device__ __forceinline__ void tma_store_4d(const void* tmap, const void* smem_src, int c0, int c1, int c2,
                                             int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];" ::"l"(
          reinterpret_cast<uint64_t>(tmap)),
      "r"(smem_addr(smem_src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void tma_reduce_add_4d(const void* tmap, const void* smem_src, int c0, int c1,
                                                  int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];" ::
          "l"(reinterpret_cast<uint64_t>(tmap)),
      "r"(smem_addr(smem_src)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}

template <int N>
__device__ __forceinline__ void bulk_wait() {  // … and until their writes are done
  asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
}

// Orders this thread's plain shared-memory writes before later reads by the async proxy (TMA
// stores, wgmma operands).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// ---- wgmma --------------------------------------------------------------------------------------

// Shared-memory matrix descriptor for a tile written by TMA with swizzle `kSwizzle` bytes (64 or
// 128; rows of exactly kSwizzle bytes).
//   K-major operand (rows = M or N, the row holds K): stride byte offset = 8 rows; the leading
//     byte offset is unused (1).
//   MN-major operand (rows = K, the row holds MN): stride byte offset = 8 K-rows; leading byte
//     offset = from one kSwizzle-byte column block of MN to the next (`lbo_bytes`).
template <int kSwizzle>
__device__ __forceinline__ uint64_t make_desc(const void* tile, uint32_t lbo_bytes = 16) {
  static_assert(kSwizzle == 64 || kSwizzle == 128, "swizzle of 64 or 128 bytes");
  constexpr uint64_t kMode = kSwizzle == 128 ? 1 : 2;
  const uint64_t sbo = 8 * kSwizzle;
  return uint64_t((smem_addr(tile) & 0x3FFFF) >> 4) | (uint64_t((lbo_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t(sbo >> 4) << 32) | (kMode << 62);
}

// Descriptor start address moved by `bytes` (multiple of 16) inside the swizzle atom: the K step.
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// d (64 × N) = A · Bᵀ over K (a multiple of 16): A (64 rows) and B (N rows) 16-bit tiles stored
// K-major as TMA writes them — rows of kSwizzle bytes, K = 128 as two such panels side by side,
// a_panel / b_panel bytes apart. Issued (one wgmma per 16 of K), not committed nor waited for.
template <int N, bool kBf16, int kSwizzle, int K>
__device__ __forceinline__ void wgmma_ss_kmajor(float (&d)[N / 2], const char* a, int a_panel, const char* b,
                                                int b_panel) {
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    const int byte = ks * 32, panel = byte / kSwizzle, off = byte % kSwizzle;
    Wgmma<N, kBf16>::ss(d, desc_advance(make_desc<kSwizzle>(a + panel * a_panel), off),
                        desc_advance(make_desc<kSwizzle>(b + panel * b_panel), off), ks > 0);
  }
}

// Keeps the compiler from moving reads or writes of accumulator registers across wgmma fences.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// ---- 8 x 8 matrices of 16-bit elements between shared memory and fragments ------------------

// Four 8 x 8 matrices stored transposed: register i of every lane holds, of matrix i, the pair
// (row g, columns 2t, 2t + 1) of the mma fragment layout (g = lane / 4, t = lane % 4); lane l
// gives the address of memory row l % 8 of matrix l / 8, 16 contiguous bytes that receive
// column l % 8 of the matrix (its 8 rows).
__device__ __forceinline__ void stmatrix_x4_trans(void* row_addr, const uint32_t (&r)[4]) {
  asm volatile(
      "stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(smem_addr(row_addr)),
      "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
      : "memory");
}

// The inverse: four 8 x 8 matrices whose memory rows (lane l gives row l % 8 of matrix l / 8)
// are the matrices' columns; register i receives, of matrix i, the pair (row g, columns 2t, 2t + 1)
// = memory rows 2t and 2t + 1, element g.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr))
               : "memory");
}

// ---- synchronisation and global reductions -----------------------------------------------------

// A barrier of `kThreads` threads (whole warps) on hardware barrier `id` (1 … 15; 0 is
// __syncthreads').
template <int kThreads>
__device__ __forceinline__ void named_barrier(int id) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "n"(kThreads) : "memory");
}

// Arrives on hardware barrier `id` of `kThreads` threads without waiting: the other side of a
// named_barrier<kThreads>(id) (a producer-consumer handoff between warpgroups).
template <int kThreads>
__device__ __forceinline__ void named_barrier_arrive(int id) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "n"(kThreads) : "memory");
}

// p[0] += x, p[1] += y in one global reduction (p 8-byte aligned).
__device__ __forceinline__ void red_add_f32x2(float* p, float x, float y) {
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(x), "f"(y) : "memory");
}

// ---- registers ----------------------------------------------------------------------------------

// Registers per thread that a CTA of kThreads threads holds at launch under
// __launch_bounds__(kThreads, 1): the 64K register file in the allocation's granule of 8 per
// thread. setmaxnreg only moves registers between the CTA's warpgroups, so the counts after it must
// fit in kThreads · launch_regs — an .inc that asks for more than the .dec freed waits forever.
template <int kThreads>
constexpr int launch_regs() {
  return 65536 / kThreads / 8 * 8;
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// ---- swizzled plain reads -----------------------------------------------------------------------

// Byte offset of (row r, byte b of the row) in a tile of kSwizzle-byte rows written by TMA.
template <int kSwizzle>
__device__ __forceinline__ uint32_t swizzled_offset(int r, int b) {
  static_assert(kSwizzle == 64 || kSwizzle == 128, "swizzle of 64 or 128 bytes");
  const int chunk = b >> 4;
  const int phase = kSwizzle == 128 ? (r & 7) : ((r >> 1) & 3);
  return uint32_t(r * kSwizzle + (((chunk ^ phase) << 4) | (b & 15)));
}

// Byte offset of (row r, byte b of the whole row; b a multiple of 16 or inside one 16-byte piece)
// in a tile of kRows rows stored as 128-byte-wide panels side by side (128-byte swizzle): the
// layout TMA writes for boxes of 128 bytes × kRows rows placed kRows · 128 bytes apart.
template <int kRows>
__device__ __forceinline__ uint32_t panel_offset(int r, int b) {
  return uint32_t((b / 128) * kRows * 128) + swizzled_offset<128>(r, b % 128);
}

// The address lane `lane` gives to ldmatrix_x4_trans / stmatrix_x4_trans for the 16 × 16 block of
// 16-bit elements at fragment rows r0 … r0 + 15, columns c0 … c0 + 15 (matrix i: rows + 8·(i % 2),
// columns + 8·(i / 2)), kept transposed in a panel tile (memory row = fragment column).
template <int kRows>
__device__ __forceinline__ uint32_t trans_x4_offset(int lane, int r0, int c0) {
  const int m = lane / 8;
  return panel_offset<kRows>(c0 + 8 * (m / 2) + lane % 8, 2 * (r0 + 8 * (m % 2)));
}

}  // namespace pf::kernels::cuda::sm90
