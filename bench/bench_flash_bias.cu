// Flash-bias kernel benchmark: our forward and forward+backward against the memory floor and the
// PyTorch references, all measured in the same run on the same GPU, printed as one table.
//
//   bench_flash_bias [--peers bench/flash_bias_peers.py] [--python python3] [--no-peers] [--reps N]
//                    [--only I] [--no-dbias] [--deterministic]
//
// - Ours: fp16 Q, K, V, bias, all four gradients, default (non-deterministic) backward; median of
//   --reps timed runs (CUDA events), after warm-up. Inputs are random (never zeros).
// - Memory floor: bytes that must move ÷ the device-to-device copy bandwidth measured here
//   (bytes read + written). Forward: Q, K, V, O and the bias once. Forward+backward adds the
//   bias again, dB, dO, dQ, dK and dV.
// - Peers: bench/flash_bias_peers.py run as a subprocess (PyTorch SDPA with a float mask that
//   requires grad, FlexAttention with the bias captured in score_mod, naive PyTorch); it prints
//   `PEER impl B H N D shared fwd_ms fwdbwd_ms` lines (nan where a peer cannot run a shape).
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_bias.h"

namespace {

using pf::kernels::FlashBiasBwdParams;
using pf::kernels::ScalarType;

struct Shape {
  int B, H, N, D;
  bool shared;  // bias shared over the batch: (1,H,N,N)
  double target_fwd, target_fwdbwd;  // ms, from the issue (H100)
};

// Uniform values in [-1, 1) from a hash of the index and a seed.
__global__ void fill_random_half(__half* x, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9e3779b1u ^ seed;
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    x[i] = __float2half(float(h) * (2.0f / 4294967296.0f) - 1.0f);
  }
}

struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t n) : bytes(n) { PF_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1))); }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

void fill(Buf& b, uint32_t seed) {
  fill_random_half<<<1024, 256>>>(static_cast<__half*>(b.p), b.bytes / 2, seed);
  PF_CUDA_CHECK_LAUNCH("fill_random_half");
}

template <typename F>
double median_ms(F&& f, int reps) {
  cudaEvent_t a, b;
  PF_CUDA_CHECK(cudaEventCreate(&a));
  PF_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t(reps);
  for (int i = 0; i < reps; ++i) {
    PF_CUDA_CHECK(cudaEventRecord(a));
    f();
    PF_CUDA_CHECK(cudaEventRecord(b));
    PF_CUDA_CHECK(cudaEventSynchronize(b));
    PF_CUDA_CHECK(cudaEventElapsedTime(&t[i], a, b));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[reps / 2];
}

// Device-to-device copy bandwidth (bytes read + written per second), 1 GiB each way.
double copy_bandwidth() {
  const size_t n = size_t(1) << 30;
  Buf src(n), dst(n);
  PF_CUDA_CHECK(cudaMemset(src.p, 1, n));
  const double ms = median_ms([&] { PF_CUDA_CHECK(cudaMemcpyAsync(dst.p, src.p, n, cudaMemcpyDeviceToDevice)); }, 20);
  return 2.0 * n / (ms * 1e-3);
}

struct Ours {
  double fwd = 0, bwd = 0, fwdbwd = 0;
};

Ours time_ours(const Shape& s, int reps, bool want_dbias, bool deterministic) {
  const size_t bnhd = size_t(s.B) * s.N * s.H * s.D;
  const size_t bias_n = size_t(s.shared ? 1 : s.B) * s.H * s.N * s.N;
  Buf q(bnhd * 2), k(bnhd * 2), v(bnhd * 2), out(bnhd * 2), dout(bnhd * 2), dq(bnhd * 2), dk(bnhd * 2), dv(bnhd * 2);
  Buf bias(bias_n * 2), dbias(bias_n * 2), lse(size_t(s.B) * s.H * s.N * 4);
  fill(q, 1);
  fill(k, 2);
  fill(v, 3);
  fill(dout, 4);
  fill(bias, 5);

  FlashBiasBwdParams p;
  p.B = s.B; p.H = s.H; p.Nq = s.N; p.Nk = s.N; p.D = s.D;
  p.scale = 1.0f / std::sqrt(float(s.D));
  p.dtype = ScalarType::F16;
  const auto st = pf::kernels::contiguous_bnhd(s.N, s.H, s.D);
  p.q = q.p; p.k = k.p; p.v = v.p; p.out = out.p; p.lse = lse.p;
  p.q_stride = p.k_stride = p.v_stride = p.out_stride = st;
  p.bias = bias.p;
  p.bias_dtype = ScalarType::F16;
  p.bias_batch_stride = s.shared ? 0 : int64_t(s.H) * s.N * s.N;
  p.bias_head_stride = int64_t(s.N) * s.N;
  p.bias_row_stride = s.N;
  p.dout = dout.p; p.dq = dq.p; p.dk = dk.p; p.dv = dv.p;
  p.dout_stride = p.dq_stride = p.dk_stride = p.dv_stride = st;
  p.dbias = want_dbias ? dbias.p : nullptr;
  p.dbias_batch_stride = p.bias_batch_stride;
  p.dbias_head_stride = p.bias_head_stride;
  p.dbias_row_stride = p.bias_row_stride;
  p.deterministic = deterministic;
  Buf ws(pf::kernels::cuda::flash_bias_backward_workspace_bytes(p));

  Ours r;
  r.fwd = median_ms([&] { pf::kernels::cuda::flash_bias_forward(p, nullptr); }, reps);
  r.bwd = median_ms([&] { pf::kernels::cuda::flash_bias_backward(p, ws.p, nullptr); }, reps);
  r.fwdbwd = median_ms(
      [&] {
        pf::kernels::cuda::flash_bias_forward(p, nullptr);
        pf::kernels::cuda::flash_bias_backward(p, ws.p, nullptr);
      },
      reps);
  PF_CUDA_CHECK(cudaDeviceSynchronize());
  return r;
}

std::string key(const Shape& s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%d,%d,%d,%d,%d", s.B, s.H, s.N, s.D, s.shared ? 1 : 0);
  return buf;
}

struct PeerTimes {
  double fwd = NAN, fwdbwd = NAN;
};

}  // namespace

int main(int argc, char** argv) try {
  std::string peers_script = std::string(PF_SOURCE_DIR) + "/bench/flash_bias_peers.py";
  std::string python = "python3";
  bool run_peers = true;
  int reps = 50;
  int only = -1;            // --only i: the i-th shape alone
  bool want_dbias = true;   // --no-dbias: backward without the bias gradient
  bool deterministic = false;  // --deterministic: the bitwise-reproducible backward
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--peers" && i + 1 < argc) peers_script = argv[++i];
    else if (a == "--python" && i + 1 < argc) python = argv[++i];
    else if (a == "--no-peers") run_peers = false;
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--only" && i + 1 < argc) only = std::atoi(argv[++i]);
    else if (a == "--no-dbias") want_dbias = false;
    else if (a == "--deterministic") deterministic = true;
    else PF_FAIL("unknown argument '" << a << "'; expected --peers PATH, --python EXE, --no-peers, --reps N, --only I, --no-dbias, --deterministic");
  }

  cudaDeviceProp prop{};
  PF_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::vector<Shape> shapes = {
      {2, 4, 4096, 32, false, 0.11, 0.45},
      {2, 4, 8192, 32, false, 0.42, 1.6},
      {4, 8, 2048, 64, false, 0.12, 0.50},
      {4, 8, 2048, 64, true, 0.10, 0.40},
  };

  if (only >= 0) {
    PF_CHECK(only < int(shapes.size()), "--only " << only << ": there are " << shapes.size() << " shapes");
    shapes = {shapes[only]};
  }
  const double bw = copy_bandwidth();
  std::printf("device: %s, %d SMs; copy bandwidth %.0f GB/s (read + write)\n", prop.name, prop.multiProcessorCount,
              bw / 1e9);

  std::map<std::string, Ours> ours;
  for (const Shape& s : shapes) {
    ours[key(s)] = time_ours(s, reps, want_dbias, deterministic);
    const Ours& o = ours[key(s)];
    std::printf("ours %s: fwd %.3f ms, bwd %.3f ms, fwd+bwd %.3f ms\n", key(s).c_str(), o.fwd, o.bwd, o.fwdbwd);
    std::fflush(stdout);
  }

  // peers, in this same run
  std::map<std::string, std::map<std::string, PeerTimes>> peers;  // impl -> shape -> times
  std::vector<std::string> impls;
  if (run_peers) {
    std::string arg;
    for (const Shape& s : shapes) arg += (arg.empty() ? "" : ";") + key(s);
    const std::string cmd = python + " " + peers_script + " --shapes '" + arg + "'";
    std::printf("running peers: %s\n", cmd.c_str());
    std::fflush(stdout);
    FILE* f = popen(cmd.c_str(), "r");
    PF_CHECK(f != nullptr, "could not start the peers script: " << cmd);
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      char impl[64];
      int B, H, N, D, sh;
      char fw[32], fb[32];
      if (std::sscanf(line, "PEER %63s %d %d %d %d %d %31s %31s", impl, &B, &H, &N, &D, &sh, fw, fb) == 8) {
        const Shape s{B, H, N, D, sh != 0, 0, 0};
        peers[impl][key(s)] = PeerTimes{std::strtod(fw, nullptr), std::strtod(fb, nullptr)};
        if (std::find(impls.begin(), impls.end(), impl) == impls.end()) impls.push_back(impl);
      } else {
        std::fputs(line, stdout);
      }
    }
    const int rc = pclose(f);
    if (rc != 0) std::printf("peers script exited with status %d\n", rc);
  }

  // the table, last
  std::printf("\nflash-bias, fp16, %s, median of %d runs (ms); floor = bytes / %.0f GB/s\n", prop.name, reps, bw / 1e9);
  std::printf("%-22s %8s %8s %8s %8s %7s %7s", "B,H,N,D[,shared]", "fwd", "f+b", "floorF", "floorFB", "tgtF",
              "tgtFB");
  for (const auto& im : impls) std::printf(" %9s %9s", (im + ".F").c_str(), (im + ".FB").c_str());
  std::printf(" %9s %9s\n", "bestF/us", "bestFB/us");
  for (const Shape& s : shapes) {
    const Ours& o = ours[key(s)];
    const double nq = double(s.B) * s.N * s.H * s.D * 2;  // one (B,N,H,D) fp16 tensor
    const double nb = double(s.shared ? 1 : s.B) * s.H * s.N * s.N * 2;
    const double floor_f = (4 * nq + nb) / bw * 1e3;
    const double floor_fb = floor_f + (nb + nb + 4 * nq) / bw * 1e3;
    char name[32];
    std::snprintf(name, sizeof name, "%d,%d,%d,%d%s", s.B, s.H, s.N, s.D, s.shared ? ",shared" : "");
    std::printf("%-22s %8.3f %8.3f %8.3f %8.3f %7.2f %7.2f", name, o.fwd, o.fwdbwd, floor_f, floor_fb, s.target_fwd,
                s.target_fwdbwd);
    double best_f = INFINITY, best_fb = INFINITY;
    for (const auto& im : impls) {
      const PeerTimes t = peers[im].count(key(s)) ? peers[im][key(s)] : PeerTimes{};
      std::printf(" %9.3f %9.3f", t.fwd, t.fwdbwd);
      if (std::isfinite(t.fwd)) best_f = std::min(best_f, t.fwd);
      if (std::isfinite(t.fwdbwd)) best_fb = std::min(best_fb, t.fwdbwd);
    }
    std::printf(" %9.2f %9.2f\n", best_f / o.fwd, best_fb / o.fwdbwd);
  }
  std::printf("(bestF/us, bestFB/us: fastest peer's time over ours, > 1 = we are faster; floorFB counts the bias twice, "
              "dB, and six (B,N,H,D) tensors)\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_flash_bias: %s\n", e.what());
  return 1;
}
