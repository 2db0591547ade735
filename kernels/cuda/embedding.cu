#include "kernels/cuda/embedding.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <climits>

#include "kernels/cuda/common.cuh"

namespace pf::kernels::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int64_t kMaxPrivate = 3072;  // floats per warp table: 4 warps × 12 KiB = 48 KiB shared
constexpr int kMaxBlocks = 512;

template <class T>
__global__ void embedding_forward_kernel(const T* weight, const int32_t* idx, T* out, int64_t n, int64_t V,
                                         int64_t D) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / D, d = i % D;
    const int32_t v = idx[row];
    out[i] = (v >= 0 && v < V) ? weight[v * D + d] : from_f<T>(NAN);
  }
}

// Each block owns a tile of at most 32 columns [c0, c0 + w) of the table and a run of rows for
// each of its warps. A warp sums its rows, in order, into its private table in shared memory,
// lane l owning column c0 + l (no two lanes touch one address); the dout of kUnroll rows is
// loaded before any is added (the loads do not depend on the indices: 8 in flight instead of 1).
// The block adds its warps' tables in order into its partial table. Deterministic: every sum's
// order depends only on n and D. Narrow tiles keep every warp's serial work short (a 4096-row
// batch of the (8, 256) token table: 256 warps of 32 rows, not 16 warps of 256 rows × 8 columns).
constexpr int kUnroll = 8;

template <class T>
__global__ void embedding_backward_private_kernel(const T* dout, const int32_t* idx, int64_t n, int64_t V,
                                                  int64_t D, int64_t Dt, float* partial) {
  extern __shared__ float table[];  // [kWarps][V*Dt], Dt ≤ 32
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t c0 = blockIdx.y * Dt, w = min(Dt, D - c0), VT = V * Dt;
  for (int64_t k = threadIdx.x; k < kWarps * VT; k += blockDim.x) table[k] = 0;
  __syncthreads();
  const int64_t chunks = int64_t(gridDim.x) * kWarps, chunk = blockIdx.x * int64_t(kWarps) + warp;
  const int64_t lo = n * chunk / chunks, hi = n * (chunk + 1) / chunks;
  float* mine = table + warp * VT;
  const bool active = lane < w;
  for (int64_t r0 = lo; r0 < hi; r0 += 32) {  // 32 rows: one index per lane, then shuffled
    const int cnt = static_cast<int>(min(int64_t{32}, hi - r0));
    const int32_t my_v = lane < cnt ? idx[r0 + lane] : -1;
    const T* col = dout + r0 * D + c0 + lane;
    for (int j0 = 0; j0 < cnt; j0 += kUnroll) {  // every lane runs every trip (the shuffles)
      float x[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u)
        x[u] = (active && j0 + u < cnt) ? to_f(col[int64_t(j0 + u) * D]) : 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t v = __shfl_sync(0xffffffffu, my_v, j0 + u);  // -1 past cnt
        if (active && v >= 0 && v < V) mine[v * Dt + lane] += x[u];
      }
    }
  }
  __syncthreads();
  const int64_t VD = V * D;
  for (int64_t k = threadIdx.x; k < V * w; k += blockDim.x) {
    const int64_t v = k / w, dd = k % w;
    float s = 0;
    for (int wi = 0; wi < kWarps; ++wi) s += table[wi * VT + v * Dt + dd];
    partial[blockIdx.x * VD + v * D + c0 + dd] = s;
  }
}

// dweight[k] = Σ_b partial[b][k] over the blocks, in block order: a (32 × 8) thread block per 32
// entries, row group y adding blocks y, y+8, ... (coalesced), then the 8 groups in order.
template <class T>
__global__ void embedding_finalize_kernel(const float* partial, int blocks, int64_t VD, T* dweight) {
  __shared__ float part[8][33];
  const int64_t k = blockIdx.x * int64_t(32) + threadIdx.x;
  float s = 0;
  if (k < VD)
    for (int b = threadIdx.y; b < blocks; b += 8) s += partial[b * VD + k];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && k < VD) {
    float t = 0;
    for (int y = 0; y < 8; ++y) t += part[y][threadIdx.x];
    dweight[k] = from_f<T>(t);
  }
}

template <class T>
__global__ void embedding_backward_atomic_kernel(const T* dout, const int32_t* idx, int64_t n, int64_t D,
                                                 int64_t V, float* acc) {
  const int64_t total = n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = idx[i / D];
    if (v >= 0 && v < V) atomicAdd(acc + v * D + i % D, to_f(dout[i]));
  }
}

// ---- the deterministic path for large tables ------------------------------------------------
// (index, row) pairs sorted by index with a stable radix sort, so each index v owns the segment
// [seg[v], seg[v+1]) of sorted positions, its rows in ascending order. A segment is cut into
// chunks of kChunk rows; one thread per (chunk, column) sums its chunk in row order. A segment
// of one chunk writes its row of dweight directly; longer ones write partial rows that one
// thread per (v, column) then adds in chunk order. Every sum's order is a function of idx alone.

constexpr int kChunk = 32;

// Indices outside [0,V) get the key V: they sort last and belong to no segment.
__global__ void sort_input_kernel(const int32_t* idx, int64_t n, int64_t V, uint32_t* keys, int32_t* rows) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = idx[i];
    keys[i] = (v >= 0 && v < V) ? static_cast<uint32_t>(v) : static_cast<uint32_t>(V);
    rows[i] = static_cast<int32_t>(i);
  }
}

__device__ __forceinline__ int64_t lower_bound(const uint32_t* a, int64_t n, uint32_t key) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (a[mid] < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// seg:(V+1) segment starts; nchunks:(V+1) chunks per segment; multi:(V+1) the same where a
// segment has ≥ 2 chunks (they need partial rows), else 0. Entry V: seg = number of valid rows,
// counts 0 (so that the exclusive scans end with the totals).
__global__ void segments_kernel(const uint32_t* keys, int64_t n, int64_t V, int32_t* seg, int32_t* nchunks,
                                int32_t* multi) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v <= V;
       v += int64_t(gridDim.x) * blockDim.x) {
    const int64_t lo = lower_bound(keys, n, static_cast<uint32_t>(v));
    seg[v] = static_cast<int32_t>(lo);
    int32_t c = 0;
    if (v < V)
      c = static_cast<int32_t>((lower_bound(keys, n, static_cast<uint32_t>(v + 1)) - lo + kChunk - 1) /
                               kChunk);
    nchunks[v] = c;
    multi[v] = c >= 2 ? c : 0;
  }
}

// One thread per (chunk k, column d); chunk_start:(V+1) the exclusive scan of nchunks,
// slot_start:(V+1) that of multi.
template <class T>
__global__ void chunk_sum_kernel(const T* dout, const int32_t* rows, const int32_t* seg,
                                 const int32_t* chunk_start, const int32_t* slot_start, int64_t V, int64_t D,
                                 int64_t max_chunks, float* partial, T* dweight) {
  const int64_t chunks = chunk_start[V];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < max_chunks * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i / D, d = i % D;
    if (k >= chunks) return;  // i only grows
    int64_t lo = 0, hi = V;   // v: the last index with chunk_start[v] ≤ k (a non-empty segment)
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (chunk_start[mid] <= k)
        lo = mid;
      else
        hi = mid - 1;
    }
    const int64_t v = lo, j = k - chunk_start[v];
    const int64_t p0 = seg[v] + j * kChunk, p1 = min(p0 + kChunk, int64_t(seg[v + 1]));
    float s = 0;
    for (int64_t p = p0; p < p1; ++p) s += to_f(dout[int64_t(rows[p]) * D + d]);
    if (chunk_start[v + 1] - chunk_start[v] == 1)
      dweight[v * D + d] = from_f<T>(s);
    else
      partial[(slot_start[v] + j) * D + d] = s;
  }
}

// One thread per (v, column): the chunk sums of segments with ≥ 2 chunks in chunk order; empty
// segments give 0; one-chunk segments are already written.
template <class T>
__global__ void chunk_finalize_kernel(const float* partial, const int32_t* chunk_start,
                                      const int32_t* slot_start, int64_t V, int64_t D, T* dweight) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < V * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = i / D, d = i % D;
    const int64_t nc = chunk_start[v + 1] - chunk_start[v];
    if (nc == 1) continue;
    float s = 0;
    for (int64_t j = 0; j < nc; ++j) s += partial[(slot_start[v] + j) * D + d];
    dweight[i] = from_f<T>(s);
  }
}

int key_bits(int64_t V) {  // keys 0..V (V = invalid)
  int b = 1;
  while ((int64_t{1} << b) <= V) ++b;
  return b;
}

// Byte offsets of the sorted path's arrays in its workspace (each 256-byte aligned).
struct SortedLayout {
  size_t keys_in, keys_out, rows_in, rows_out, seg, nchunks, multi, chunk_start, slot_start, partial, temp,
      temp_bytes, total;
  int64_t max_chunks;  // Σ_v ⌈c_v / kChunk⌉ ≤ ⌈n / kChunk⌉ + min(V, n)
};

SortedLayout sorted_layout(int64_t n, int64_t V, int64_t D) {
  PF_CHECK(n <= INT32_MAX && V <= (int64_t{1} << 30),
           "embedding_backward (deterministic): at most 2^31-1 indices and 2^30 rows, got n = "
               << n << ", V = " << V);
  size_t sort_bytes = 0, scan_bytes = 0;
  PF_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                                      static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                      static_cast<int32_t*>(nullptr), static_cast<int>(n), 0, key_bits(V)));
  PF_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                              static_cast<int32_t*>(nullptr), static_cast<int>(V + 1)));
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  // Chunks of segments longer than kChunk: Σ ⌈c/kChunk⌉ over c > kChunk < 2n/kChunk.
  const int64_t max_partial_rows = 2 * n_chunks;
  SortedLayout l{};
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t off = at;
    at += (bytes + 255) / 256 * 256;
    return off;
  };
  l.keys_in = take(n * sizeof(uint32_t));
  l.keys_out = take(n * sizeof(uint32_t));
  l.rows_in = take(n * sizeof(int32_t));
  l.rows_out = take(n * sizeof(int32_t));
  l.seg = take((V + 1) * sizeof(int32_t));
  l.nchunks = take((V + 1) * sizeof(int32_t));
  l.multi = take((V + 1) * sizeof(int32_t));
  l.chunk_start = take((V + 1) * sizeof(int32_t));
  l.slot_start = take((V + 1) * sizeof(int32_t));
  l.partial = take(static_cast<size_t>(max_partial_rows) * D * sizeof(float));
  l.temp_bytes = std::max<size_t>(std::max(sort_bytes, scan_bytes), 1);
  l.temp = take(l.temp_bytes);
  l.total = at;
  l.max_chunks = n_chunks + std::min(V, n);
  return l;
}

template <class T>
void embedding_backward_sorted(const T* dout, const int32_t* idx, T* dweight, int64_t n, int64_t V, int64_t D,
                               char* ws) {
  const SortedLayout l = sorted_layout(n, V, D);
  auto at = [ws](size_t off) { return static_cast<void*>(ws + off); };
  auto* keys_in = static_cast<uint32_t*>(at(l.keys_in));
  auto* keys_out = static_cast<uint32_t*>(at(l.keys_out));
  auto* rows_in = static_cast<int32_t*>(at(l.rows_in));
  auto* rows_out = static_cast<int32_t*>(at(l.rows_out));
  auto* seg = static_cast<int32_t*>(at(l.seg));
  auto* nchunks = static_cast<int32_t*>(at(l.nchunks));
  auto* multi = static_cast<int32_t*>(at(l.multi));
  auto* chunk_start = static_cast<int32_t*>(at(l.chunk_start));
  auto* slot_start = static_cast<int32_t*>(at(l.slot_start));
  auto* partial = static_cast<float*>(at(l.partial));
  const cudaStream_t s = cur_stream();

  sort_input_kernel<<<grid_for(n, 256), 256, 0, s>>>(idx, n, V, keys_in, rows_in);
  PF_CUDA_CHECK_LAUNCH("embedding_backward (sort keys)");
  size_t temp_bytes = l.temp_bytes;
  PF_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(at(l.temp), temp_bytes, keys_in, keys_out, rows_in, rows_out,
                                                static_cast<int>(n), 0, key_bits(V), s));
  segments_kernel<<<grid_for(V + 1, 256), 256, 0, s>>>(keys_out, n, V, seg, nchunks, multi);
  PF_CUDA_CHECK_LAUNCH("embedding_backward (segments)");
  temp_bytes = l.temp_bytes;
  PF_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(at(l.temp), temp_bytes, nchunks, chunk_start,
                                              static_cast<int>(V + 1), s));
  temp_bytes = l.temp_bytes;
  PF_CUDA_CHECK(
      cub::DeviceScan::ExclusiveSum(at(l.temp), temp_bytes, multi, slot_start, static_cast<int>(V + 1), s));
  chunk_sum_kernel<T><<<grid_for(l.max_chunks * D, 256), 256, 0, s>>>(
      dout, rows_out, seg, chunk_start, slot_start, V, D, l.max_chunks, partial, dweight);
  PF_CUDA_CHECK_LAUNCH("embedding_backward (chunk sums)");
  chunk_finalize_kernel<T>
      <<<grid_for(V * D, 256), 256, 0, s>>>(partial, chunk_start, slot_start, V, D, dweight);
  PF_CUDA_CHECK_LAUNCH("embedding_backward (ordered sum)");
}

__global__ void f32_to_bf16_kernel(const float* src, bf16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

// The shared-memory path takes tables of at most kMaxPrivate / 32 = 96 rows in tiles of 32
// columns (every table of the pair-bias model), and narrower ones of ≤ kMaxPrivate entries.
bool private_fits(int64_t V, int64_t D) { return V <= kMaxPrivate / 32 || V * D <= kMaxPrivate; }

int64_t private_tile(int64_t D) { return std::min<int64_t>(D, 32); }  // V·Dt ≤ kMaxPrivate

int private_blocks(int64_t n) {
  // at least 32 rows per warp (one index load) and at most kMaxBlocks partial tables
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, n / (32 * kWarps))));
}

}  // namespace

void embedding_forward(ScalarType t, const void* weight, const int32_t* idx, void* out, int64_t n, int64_t V,
                       int64_t D) {
  if (n * D == 0) return;
  dispatch_dtype(t, "embedding_forward", [&](auto tag) {
    using T = decltype(tag);
    embedding_forward_kernel<T><<<grid_for(n * D, 256), 256, 0, cur_stream()>>>(
        static_cast<const T*>(weight), idx, static_cast<T*>(out), n, V, D);
    PF_CUDA_CHECK_LAUNCH("embedding_forward");
  });
}

size_t embedding_backward_workspace_bytes(int64_t n, int64_t V, int64_t D, bool deterministic) {
  if (private_fits(V, D)) return static_cast<size_t>(private_blocks(n)) * V * D * sizeof(float);
  if (deterministic) return n > 0 ? sorted_layout(n, V, D).total : 0;
  return static_cast<size_t>(V) * D * sizeof(float);  // the fp32 accumulator of the atomic path
}

void embedding_backward(ScalarType t, const void* dout, const int32_t* idx, void* dweight, int64_t n,
                        int64_t V, int64_t D, void* workspace, bool deterministic) {
  const int64_t VD = V * D;
  if (VD == 0) return;
  float* ws = static_cast<float*>(workspace);
  dispatch_dtype(t, "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    if (!private_fits(V, D) && deterministic) {
      if (n == 0)
        memset_zero(dweight, VD * sizeof(T));  // empty sums (bf16 zero is all-zero bits)
      else
        embedding_backward_sorted<T>(static_cast<const T*>(dout), idx, static_cast<T*>(dweight), n, V, D,
                                     static_cast<char*>(workspace));
      return;
    }
    if (private_fits(V, D)) {
      const int blocks = private_blocks(n);
      const int64_t Dt = private_tile(D);
      const size_t smem = kWarps * V * Dt * sizeof(float);  // ≤ 48 KiB
      const dim3 grid(blocks, static_cast<unsigned>((D + Dt - 1) / Dt));
      embedding_backward_private_kernel<T>
          <<<grid, kWarps * 32, smem, cur_stream()>>>(static_cast<const T*>(dout), idx, n, V, D, Dt, ws);
      PF_CUDA_CHECK_LAUNCH("embedding_backward");
      embedding_finalize_kernel<T><<<static_cast<unsigned>((VD + 31) / 32), dim3(32, 8), 0, cur_stream()>>>(
          ws, blocks, VD, static_cast<T*>(dweight));
      PF_CUDA_CHECK_LAUNCH("embedding_finalize");
      return;
    }
    float* acc = std::is_same<T, float>::value ? static_cast<float*>(dweight) : ws;
    memset_zero(acc, VD * sizeof(float));
    if (n * D > 0)
      embedding_backward_atomic_kernel<T>
          <<<grid_for(n * D, 256), 256, 0, cur_stream()>>>(static_cast<const T*>(dout), idx, n, D, V, acc);
    PF_CUDA_CHECK_LAUNCH("embedding_backward (atomic)");
    if (!std::is_same<T, float>::value) {
      f32_to_bf16_kernel<<<grid_for(VD, 256), 256, 0, cur_stream()>>>(acc, static_cast<bf16*>(dweight), VD);
      PF_CUDA_CHECK_LAUNCH("embedding_backward (to bf16)");
    }
  });
}

}  // namespace pf::kernels::cuda
