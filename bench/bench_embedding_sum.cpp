// embedding_sum backward benchmark: the pair representation's table gradient of
// configs/pairbias_af.yaml (B 8, N 384, c_z 128: Dist 64 bins + Rel 65 positions, g bf16, 302 MB)
// through the tensor-core kernel and through the shared-memory kernel, against the memory floor
// measured in the same run.
//
//   bench_embedding_sum [--reps N]
//
// - Indices as the model makes them: distance bins of freely jointed chains (3.8 Å steps,
//   dist_max 16 Å, 64 bins), relative positions clip(j − i, −32, 32) + 32, one chain per batch.
// - The shared-memory kernel runs on a copy of g placed one element past a 16-byte boundary (the
//   tensor-core kernel needs 16-byte aligned rows, so that address takes the other kernel); the
//   two kernels' tables are compared.
// - Floor: g and the row indices read once ÷ the device-to-device copy bandwidth (bytes read +
//   written per second) measured here. Median of --reps runs (CUDA events) after warm-up.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/convert.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/fused.h"

namespace {

namespace kc = pf::kernels::cuda;
using pf::kernels::ScalarType;

// Device memory released at scope end.
struct DevBuf {
  void* p;
  explicit DevBuf(size_t bytes) : p(kc::raw_malloc(std::max<size_t>(bytes, 1))) {
    if (!p) {
      std::fprintf(stderr, "bench_embedding_sum: out of device memory for %zu bytes\n", bytes);
      std::exit(1);
    }
  }
  ~DevBuf() { kc::raw_free(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
};

// Median milliseconds of f() on the context's stream.
template <class F>
double median_ms(F&& f, int reps) {
  auto s = static_cast<cudaStream_t>(kc::stream());
  cudaEvent_t a, b;
  PF_CUDA_CHECK(cudaEventCreate(&a));
  PF_CUDA_CHECK(cudaEventCreate(&b));
  f();
  f();
  std::vector<float> t(reps);
  for (float& x : t) {
    PF_CUDA_CHECK(cudaEventRecord(a, s));
    f();
    PF_CUDA_CHECK(cudaEventRecord(b, s));
    PF_CUDA_CHECK(cudaEventSynchronize(b));
    PF_CUDA_CHECK(cudaEventElapsedTime(&x, a, b));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "bench_embedding_sum: unknown argument '%s' (expected --reps N)\n", argv[i]);
      return 2;
    }
  }
  if (reps < 1) {
    std::fprintf(stderr, "bench_embedding_sum: --reps must be >= 1, got %d\n", reps);
    return 2;
  }
  const int B = 8, N = 384, D = 128, bins = 64, R = 32, Va = bins, Vb = 2 * R + 1;
  const int64_t rows = int64_t(B) * N * N, S = int64_t(N) * N;

  // Indices and g on the host.
  std::mt19937_64 rng(12);
  std::normal_distribution<double> normal;
  std::vector<int32_t> ia(rows), ib(S);
  for (int b = 0; b < B; ++b) {
    std::vector<double> x(3 * N, 0.0);
    for (int i = 1; i < N; ++i) {
      double u[3], n2 = 0;
      for (double& c : u) n2 += (c = normal(rng)) * c;
      for (int c = 0; c < 3; ++c) x[3 * i + c] = x[3 * (i - 1) + c] + 3.8 * u[c] / std::sqrt(n2);
    }
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) {
        double d2 = 0;
        for (int c = 0; c < 3; ++c) d2 += (x[3 * i + c] - x[3 * j + c]) * (x[3 * i + c] - x[3 * j + c]);
        ia[(int64_t(b) * N + i) * N + j] =
            std::clamp(static_cast<int>(std::sqrt(d2) / 16.0 * bins), 0, bins - 1);
      }
  }
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) ib[int64_t(i) * N + j] = std::clamp(j - i, -R, R) + R;
  std::vector<uint16_t> g(size_t(rows) * D);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  for (uint16_t& v : g) v = pf::kernels::cpu::float_to_bf16(uni(rng));

  DevBuf dg(g.size() * 2), dg_off(g.size() * 2 + 2), dia(ia.size() * 4), dib(ib.size() * 4);
  const void* aligned = dg.p;
  const void* offset = static_cast<const uint16_t*>(dg_off.p) + 1;
  kc::copy_host_to_device(dg.p, g.data(), g.size() * 2);
  kc::copy_host_to_device(static_cast<uint16_t*>(dg_off.p) + 1, g.data(), g.size() * 2);
  kc::copy_host_to_device(dia.p, ia.data(), ia.size() * 4);
  kc::copy_host_to_device(dib.p, ib.data(), ib.size() * 4);
  DevBuf da(size_t(Va) * D * 4), db(size_t(Vb) * D * 4),
      ws(kc::embedding_sum_backward_workspace_bytes(rows, D, Va, Vb));

  auto run = [&](const void* gp) {
    kc::embedding_sum_backward(ScalarType::BF16, ScalarType::F32, gp, static_cast<const int32_t*>(dia.p),
                               static_cast<const int32_t*>(dib.p), da.p, db.p, rows, S, D, Va, Vb, ws.p);
  };
  if (!kc::embedding_sum_backward_on_tensor_cores(ScalarType::BF16, D, Va, Vb)) {
    std::fprintf(stderr, "bench_embedding_sum: the tensor-core kernel does not take D = %d, V = %d\n", D,
                 Va + Vb);
    return 1;
  }
  // The two kernels' tables of the same g, for a line that says they agree.
  std::vector<float> t_mma(size_t(Va + Vb) * D), t_smem(t_mma.size());
  auto tables = [&](const void* gp, std::vector<float>& t) {
    run(gp);
    kc::copy_device_to_host(t.data(), da.p, size_t(Va) * D * 4);
    kc::copy_device_to_host(t.data() + size_t(Va) * D, db.p, size_t(Vb) * D * 4);
  };
  tables(aligned, t_mma);
  const double ms_mma = median_ms([&] { run(aligned); }, reps);
  tables(offset, t_smem);
  const double ms_smem = median_ms([&] { run(offset); }, reps);

  // Copy bandwidth: 1 GiB device to device, read + written.
  const size_t n = size_t(1) << 30;
  DevBuf src(n), dst(n);
  kc::memset_zero(src.p, n);
  const double ms_copy = median_ms([&] { kc::copy_device_to_device(dst.p, src.p, n); }, reps);
  const double bw = 2.0 * n / (ms_copy * 1e-3);
  const double bytes = double(rows) * D * 2 + double(rows) * 4 + double(S) * 4;
  const double floor_ms = bytes / bw * 1e3;

  cudaDeviceProp prop{};
  PF_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; copy bandwidth %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, bw * 1e-9);
  std::printf("embedding_sum backward, rows %lld (B %d, N %d), D %d, tables %d + %d, g bf16 (%.0f MB)\n",
              static_cast<long long>(rows), B, N, D, Va, Vb, double(rows) * D * 2 * 1e-6);
  std::printf("  %-28s %9s %9s %12s\n", "kernel", "ms", "floor ms", "time/floor");
  std::printf("  %-28s %9.3f %9.3f %12.2f\n", "tensor cores (mma.sync)", ms_mma, floor_ms, ms_mma / floor_ms);
  std::printf("  %-28s %9.3f %9.3f %12.2f\n", "shared memory (g + 1 elem)", ms_smem, floor_ms,
              ms_smem / floor_ms);
  double diff = 0, big = 0;
  for (size_t i = 0; i < t_mma.size(); ++i) {
    diff = std::max(diff, double(std::abs(t_mma[i] - t_smem[i])));
    big = std::max(big, double(std::abs(t_smem[i])));
  }
  std::printf("  tables: max |tensor cores - shared memory| = %.3g, max |entry| = %.3g\n", diff, big);
  return 0;
}
