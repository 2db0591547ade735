// Training throughput of the pair-bias model on the GPU: tokens per second and peak GPU memory
// of whole training steps (forward, backward, gradient clipping, AdamW), after warm-up steps,
// with the time split per op family from a synchronised profile. bench/bench_train_gpu.py runs
// it next to the same model in PyTorch and prints the table of ratios.
//
//   bench_train_gpu CONFIG [warmup=5] [steps=30] [key=value overrides ...]
//
// Prints one JSON line: {"tokens_per_s": ..., "ms_per_step": ..., "peak_mib": ..., ...}
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "data/chain.h"
#include "framework/allocator.h"
#include "framework/autograd.h"
#include "framework/config.h"
#include "framework/optim.h"
#include "framework/precision.h"
#include "kernels/cuda/context.h"
#include "models/pairbias.h"
#include "run/modes.h"

int main(int argc, char** argv) {
  using namespace pf;
  try {
    PF_CHECK(argc >= 2, "usage: bench_train_gpu CONFIG [warmup=5] [steps=30] [key=value ...]");
    int warmup = 5, steps = 30;
    std::vector<std::string> overrides;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("warmup=", 0) == 0) warmup = std::stoi(a.substr(7));
      else if (a.rfind("steps=", 0) == 0) steps = std::stoi(a.substr(6));
      else overrides.push_back(a);
    }
    const Config cfg = load_config(argv[1], overrides);
    PF_CHECK(cuda_available(), "bench_train_gpu needs a CUDA device");
    const auto& t = cfg.train;
    const int B = t.batch_size, N = cfg.data.n_res;
    // Random chains in memory (DESIGN §3): enough for distinct batches, no files.
    const ChainSet set = generate_chains(4 * B, N, cfg.model.n_types, cfg.data.seed, "bench");
    models::PairBiasModel model(cfg.model, t.seed);
    model.to(Device::CUDA);
    const auto params = model.named_parameters();
    optim::AdamW opt(params, optim::decay_mask(params, {"embed.weight", "pair.rel.weight", "pair.dist.weight"}),
                     {t.lr, 0.9, 0.999, 1e-8, t.weight_decay});
    const AutocastGuard autocast(t.precision == "bf16" ? DType::BF16 : DType::F32);
    std::vector<run::BatchTensors> batches;
    for (int k = 0; k < 4; ++k) {
      std::vector<int> idx;
      for (int i = 0; i < B; ++i) idx.push_back(k * B + i);
      batches.push_back(run::to_tensors(gather_batch(set, idx), cfg.model, Device::CUDA));
    }
    double loss = 0;
    auto step = [&](int s) {
      const auto& b = batches[s % batches.size()];
      model.zero_grad();
      const auto r = models::model_loss(model, b.tokens, b.pair, b.labels);
      r.loss.backward();
      optim::clip_grad_norm(model.parameters(), t.grad_clip);
      opt.step(t.lr);
      return r;
    };
    for (int s = 0; s < warmup; ++s) loss = step(s).loss.item();
    kernels::cuda::synchronize();
    cuda_reset_peak_memory();
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) loss = step(s).loss.item();
    kernels::cuda::synchronize();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const CudaMemoryStats m = cuda_memory_stats();
    std::printf("{\"tokens_per_s\": %.1f, \"ms_per_step\": %.3f, \"peak_mib\": %.1f, "
                "\"peak_reserved_mib\": %.1f, \"loss\": %.5f, \"B\": %d, \"N\": %d, "
                "\"precision\": \"%s\", \"steps\": %d}\n",
                double(B) * N * steps / sec, 1e3 * sec / steps, m.peak_allocated / 1048576.0,
                m.peak_reserved / 1048576.0, loss, B, N, t.precision.c_str(), steps);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_gpu: %s\n", e.what());
    return 1;
  }
}
