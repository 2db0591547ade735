// Training throughput of the pair-bias model on the GPU: tokens per second and peak GPU memory
// of whole training steps (forward, backward, gradient clipping, AdamW), after warm-up steps,
// and on request the time split per op category (framework/profile.h).
// bench/bench_train_gpu.py runs it next to the same model in PyTorch and prints the table of
// ratios.
//
//   bench_train_gpu CONFIG [warmup=5] [steps=30] [--profile] [--unfused[=OPS]] [--data=MODE]
//                   [--graph=MODE] [--attention=MODE] [key=value overrides ...]
//
//   --profile     after the timed steps, as many again with the profile on; prints the split
//                 (ms per step per category, % of the profiled step) before the JSON line.
//                 Events cost host time: the profiled step is slower than the timed one, and
//                 both are printed.
//   --unfused     every fused op of framework/ops.h runs the chain of ops it replaces
//                 (ops::set_fused): the pair bias as layernorm → linear → permute, the pair
//                 representation as two lookups, casts and an add. --unfused=pair_bias (or
//                 =embedding_sum) unfuses that one only.
//   --data=fixed     4 batches made and uploaded before timing, reused (the default; no data
//                    cost in the step, as in bench/bench_train_gpu.py's PyTorch runs)
//   --data=sync      each step makes its batch on the host (gather, pair features) and uploads
//                    it before the forward, as run/train_loop.cpp's training loop does
//   --data=prefetch  a worker thread makes the next batch on the host while the current step
//                    runs; the step only uploads it
//   --graph=off|on|compare  times the training loop's own step (run/train_step.h: the batch
//                    uploaded, loss, accuracy, norm and update flag read back once) on 4 host
//                    batches: eager (off), captured in a CUDA graph and replayed (on), or both
//                    one after the other from the same initial weights (compare), printing
//                    eager and replay ms per step and their ratio (tokens_per_s, ms_per_step
//                    and peak_mib of the JSON line are the replay's where it ran)
//   --attention=auto|portable|compare  the flash-bias kernels the steps run
//                    (kernels/cuda/flash_bias.h): the default choice (auto: the Hopper kernels on
//                    an H100/H200 where they cover the problem), the portable kernels only, or
//                    both (compare): after the warm-up, three rounds of `steps` steps on each
//                    path in turn, printing each path's median ms per step and their ratio (the
//                    JSON line is auto's); not with --graph or --profile
//
// Prints one JSON line last: {"tokens_per_s": ..., "ms_per_step": ..., "peak_mib": ..., ...}
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

#include "data/chain.h"
#include "framework/allocator.h"
#include "framework/autograd.h"
#include "framework/config.h"
#include "framework/deterministic.h"
#include "framework/ops.h"
#include "framework/optim.h"
#include "framework/precision.h"
#include "framework/profile.h"
#include "kernels/cuda/context.h"
#include "kernels/cuda/flash_bias.h"
#include "models/pairbias.h"
#include "run/modes.h"
#include "run/train_step.h"

namespace {

using namespace pf;

// A batch's tensors moved to `device` (the upload of a batch made on the host).
run::BatchTensors to_device(const run::BatchTensors& b, Device device) {
  run::BatchTensors out;
  out.tokens = b.tokens.to(device);
  out.labels = b.labels.to(device);
  if (b.pair.rel_idx.defined()) out.pair.rel_idx = b.pair.rel_idx.to(device);
  if (b.pair.dist_bin.defined()) out.pair.dist_bin = b.pair.dist_bin.to(device);
  return out;
}

// --graph: the training loop's step, eager and/or replayed from a CUDA graph, on the first 4
// batches of `set`; ms per step (wall time, the step's one read-back included) of each.
int bench_train_step(const Config& cfg, const ChainSet& set, const std::string& graph_mode, int warmup,
                     int steps, const char* config_path) {
  const auto& t = cfg.train;
  const int B = t.batch_size, N = cfg.data.n_res;
  std::vector<run::HostBatch> batches;
  for (int k = 0; k < 4; ++k) {
    std::vector<int> idx;
    for (int i = 0; i < B; ++i) idx.push_back(k * B + i);
    batches.push_back(run::gather_host(set, idx, false, 1, 0));
  }
  const AutocastGuard autocast(t.precision == "bf16" ? DType::BF16 : DType::F32);
  const DeterministicGuard deterministic(t.deterministic);
  struct Timing {
    double ms = 0, peak_mib = 0, loss = 0;
    int64_t replays = 0;
  };
  auto time_mode = [&](const std::string& mode) {
    Config c = cfg;
    c.train.cuda_graph = mode;
    models::PairBiasModel model(c.model, t.seed);
    model.to(Device::CUDA);
    optim::AdamW opt = run::training_optimizer(model, t);
    run::TrainStep step(model, opt, c, Device::CUDA);
    Timing r;
    for (int s = 0; s < std::max(warmup, 2); ++s) step(batches[s % 4], t.lr);  // warm-up, capture
    kernels::cuda::synchronize();
    cuda_reset_peak_memory();
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) r.loss = step(batches[s % 4], t.lr).loss;
    r.ms = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
    // the live tensors at their peak, plus (replaying) the graph pool's blocks that hold the step's
    // temporaries: a replay allocates nothing, so its temporaries are not in peak_allocated
    const CudaMemoryStats m = cuda_memory_stats();
    r.peak_mib = (m.peak_allocated + m.graph_cached) / 1048576.0;
    r.replays = step.replays();
    return r;
  };
  const bool eager = graph_mode != "on", graph = graph_mode != "off";
  const Timing e = eager ? time_mode("off") : Timing{}, g = graph ? time_mode("on") : Timing{};
  if (eager && graph)
    std::printf("# %s, %s, B %d N %d: eager %.3f ms/step, graph replay %.3f ms/step (%.2fx)\n", config_path,
                t.precision.c_str(), B, N, e.ms, g.ms, e.ms / g.ms);
  const double tokens = double(B) * N;
  const Timing& main_run = graph ? g : e;  // the keys bench_train_gpu.py's table reads
  std::printf(
      "{\"tokens_per_s\": %.1f, \"ms_per_step\": %.3f, \"peak_mib\": %.1f, "
      "\"graph\": \"%s\", \"eager_ms_per_step\": %.3f, \"graph_ms_per_step\": %.3f, "
      "\"eager_tokens_per_s\": %.1f, \"graph_tokens_per_s\": %.1f, \"eager_peak_mib\": %.1f, "
      "\"graph_peak_mib\": %.1f, \"eager_loss\": %.6f, \"graph_loss\": %.6f, \"graph_replays\": %lld, "
      "\"B\": %d, \"N\": %d, \"precision\": \"%s\", \"steps\": %d}\n",
      1e3 * tokens / main_run.ms, main_run.ms, main_run.peak_mib, graph_mode.c_str(), e.ms, g.ms,
      eager ? 1e3 * tokens / e.ms : 0.0, graph ? 1e3 * tokens / g.ms : 0.0, e.peak_mib, g.peak_mib, e.loss,
      g.loss, static_cast<long long>(g.replays), B, N, t.precision.c_str(), steps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace pf;
  try {
    PF_CHECK(argc >= 2,
             "usage: bench_train_gpu CONFIG [warmup=5] [steps=30] [--profile] "
             "[--unfused] [--data=fixed|sync|prefetch] [--graph=off|on|compare] "
             "[--attention=auto|portable|compare] [key=value ...]");
    int warmup = 5, steps = 30;
    bool profile_on = false;
    std::string data_mode = "fixed", graph_mode, attention = "auto";
    std::vector<std::string> overrides, unfused;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("warmup=", 0) == 0)
        warmup = std::stoi(a.substr(7));
      else if (a.rfind("steps=", 0) == 0)
        steps = std::stoi(a.substr(6));
      else if (a == "--profile")
        profile_on = true;
      else if (a == "--unfused")
        unfused = {"pair_bias", "embedding_sum"};
      else if (a.rfind("--unfused=", 0) == 0)
        unfused = {a.substr(10)};
      else if (a.rfind("--data=", 0) == 0)
        data_mode = a.substr(7);
      else if (a.rfind("--graph=", 0) == 0)
        graph_mode = a.substr(8);
      else if (a.rfind("--attention=", 0) == 0)
        attention = a.substr(12);
      else
        overrides.push_back(a);
    }
    std::string fusion = unfused.empty() ? "fused" : "unfused:";
    for (const std::string& op : unfused) {
      ops::set_fused(op.c_str(), false);
      fusion += " " + op;
    }
    PF_CHECK(data_mode == "fixed" || data_mode == "sync" || data_mode == "prefetch",
             "--data must be fixed, sync or prefetch, got '" << data_mode << "'");
    PF_CHECK(graph_mode.empty() || graph_mode == "off" || graph_mode == "on" || graph_mode == "compare",
             "--graph must be off, on or compare, got '" << graph_mode << "'");
    PF_CHECK(attention == "auto" || attention == "portable" || attention == "compare",
             "--attention must be auto, portable or compare, got '" << attention << "'");
    PF_CHECK(attention != "compare" || (graph_mode.empty() && !profile_on),
             "--attention=compare times eager steps without the profile: not with --graph or --profile");
    using kernels::cuda::FlashBiasPath;
    kernels::cuda::set_flash_bias_path(attention == "portable" ? FlashBiasPath::kPortable
                                                               : FlashBiasPath::kAuto);
    PF_CHECK(steps >= 1 && warmup >= 0,
             "steps must be >= 1 and warmup >= 0, got steps=" << steps << " warmup=" << warmup);
    const Config cfg = load_config(argv[1], overrides);
    PF_CHECK(cuda_available(), "bench_train_gpu needs a CUDA device");
    const auto& t = cfg.train;
    const int B = t.batch_size, N = cfg.data.n_res;
    // Random chains in memory (docs/DESIGN.md §3): enough for distinct batches, no files.
    const int n_batches = data_mode == "fixed" ? 4 : 16;
    const ChainSet set = generate_chains(n_batches * B, N, cfg.model.n_types, cfg.data.seed, "bench");
    if (!graph_mode.empty()) return bench_train_step(cfg, set, graph_mode, warmup, steps, argv[1]);
    models::PairBiasModel model(cfg.model, t.seed);
    model.to(Device::CUDA);
    optim::AdamW opt = run::training_optimizer(model, t);
    const AutocastGuard autocast(t.precision == "bf16" ? DType::BF16 : DType::F32);
    // Batch k on the host: gather + pair features (what run/batches.cpp's to_tensors does).
    auto host_batch = [&](int k) {
      std::vector<int> idx;
      for (int i = 0; i < B; ++i) idx.push_back((k % n_batches) * B + i);
      return run::to_tensors(gather_batch(set, idx), cfg.model, Device::CPU);
    };
    std::vector<run::BatchTensors> fixed;
    if (data_mode == "fixed")
      for (int k = 0; k < 4; ++k) fixed.push_back(to_device(host_batch(k), Device::CUDA));
    std::future<run::BatchTensors> next;  // prefetch: the host batch of the next step
    int step_no = 0;
    auto batch_for_step = [&]() -> run::BatchTensors {
      const int s = step_no++;
      if (data_mode == "fixed") return fixed[s % fixed.size()];
      const profile::Scope ps("data");
      if (data_mode == "sync") return to_device(host_batch(s), Device::CUDA);
      if (!next.valid()) next = std::async(std::launch::async, host_batch, s);
      run::BatchTensors host = next.get();
      next = std::async(std::launch::async, host_batch, s + 1);  // runs while this step trains
      return to_device(host, Device::CUDA);
    };
    double loss = 0;
    auto step = [&] {
      const run::BatchTensors b = batch_for_step();
      model.zero_grad();
      const auto r = models::model_loss(model, b.tokens, b.pair, b.labels);
      r.loss.backward();
      optim::clip_grad_norm(model.parameters(), t.grad_clip);
      opt.step(t.lr);
      loss = r.loss.item();
    };
    // `n` steps; seconds of wall time (the loss read each step synchronises, as in training).
    auto timed_steps = [&](int n) {
      kernels::cuda::synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < n; ++s) {
        step();
        if (profile::enabled()) profile::collect();
      }
      kernels::cuda::synchronize();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    timed_steps(warmup);
    if (attention == "compare") {  // both paths, alternating, from the same (warmed-up) run
      std::vector<double> ms[2];
      for (int round = 0; round < 3; ++round)
        for (int path = 0; path < 2; ++path) {
          kernels::cuda::set_flash_bias_path(path == 0 ? FlashBiasPath::kAuto : FlashBiasPath::kPortable);
          timed_steps(1);  // the other path's first step (its workspace sizes) outside the timing
          ms[path].push_back(1e3 * timed_steps(steps) / steps);
        }
      kernels::cuda::set_flash_bias_path(FlashBiasPath::kAuto);
      for (auto& v : ms) std::sort(v.begin(), v.end());
      std::printf(
          "# %s, %s, B %d N %d: attention auto %.3f ms/step, portable %.3f ms/step (%.3fx); three rounds, sorted: "
          "auto %.3f %.3f %.3f, portable %.3f %.3f %.3f\n",
          argv[1], t.precision.c_str(), B, N, ms[0][1], ms[1][1], ms[1][1] / ms[0][1], ms[0][0], ms[0][1],
          ms[0][2], ms[1][0], ms[1][1], ms[1][2]);
    }
    cuda_reset_peak_memory();
    const double sec = timed_steps(steps);
    const CudaMemoryStats m = cuda_memory_stats();
    double profiled_ms = 0;
    if (profile_on) {
      profile::set_enabled(true, Device::CUDA);
      profile::reset();
      profiled_ms = 1e3 * timed_steps(steps) / steps;
      const std::vector<profile::Row> rows = profile::report();
      profile::set_enabled(false);
      std::printf(
          "# time split, %s, %s, B %d N %d, %s, data %s: %d profiled steps, %.3f ms each "
          "(unprofiled %.3f)\n",
          argv[1], t.precision.c_str(), B, N, fusion.c_str(), data_mode.c_str(), steps, profiled_ms,
          1e3 * sec / steps);
      std::printf("%s", profile::table(rows, steps, profiled_ms).c_str());
    }
    if (next.valid()) next.wait();
    std::printf(
        "{\"tokens_per_s\": %.1f, \"ms_per_step\": %.3f, \"peak_mib\": %.1f, "
        "\"peak_reserved_mib\": %.1f, \"loss\": %.5f, \"B\": %d, \"N\": %d, "
        "\"precision\": \"%s\", \"steps\": %d, \"fusion\": \"%s\", \"data\": \"%s\", "
        "\"profiled_ms_per_step\": %.3f, \"attention\": \"%s\"}\n",
        double(B) * N * steps / sec, 1e3 * sec / steps, m.peak_allocated / 1048576.0,
        m.peak_reserved / 1048576.0, loss, B, N, t.precision.c_str(), steps, fusion.c_str(),
        data_mode.c_str(), profiled_ms, attention.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_gpu: %s\n", e.what());
    return 1;
  }
}
