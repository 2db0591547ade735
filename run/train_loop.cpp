#include "run/train_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <sstream>

#include "framework/allocator.h"
#include "framework/anomaly.h"
#include "framework/autograd.h"
#include "framework/deterministic.h"
#include "framework/distributed.h"
#include "framework/optim.h"
#include "framework/precision.h"
#include "framework/run_dir.h"
#include "run/batches.h"
#include "run/checkpoint.h"
#include "run/environment.h"
#include "run/evaluate.h"
#include "run/launch.h"
#include "run/plots.h"

namespace pf::run {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

const std::vector<std::string> kEmbeddings = {"embed.weight", "pair.rel.weight", "pair.dist.weight"};

// What one step reports: the batch's loss and accuracy (with comm, the means over the ranks), the
// gradient norm before clipping, and whether the weights were updated.
struct StepResult {
  double loss = 0, accuracy = 0, grad_norm = 0;
  bool updated = false;
};

// One optimisation step on one batch, every stage one call: forward and loss, backward (with
// grad_sync, the ranks' gradients averaged while it runs), gradient clipping, and the AdamW update
// at learning rate lr. A non-finite loss or gradient norm gets no update: weights and moments stay
// as they were.
StepResult train_step(models::PairBiasModel& model, optim::AdamW& opt, const HostBatch& batch, bool packed,
                      Device device, double lr, double grad_clip, dist::GradientSync* grad_sync,
                      dist::Communicator* comm) {
  model.zero_grad();
  const auto r = host_batch_loss(model, batch, packed, device);
  if (grad_sync) {
    grad_sync->backward(r.loss);  // the mean of the ranks' gradients = the global batch's
  } else {
    r.loss.backward();
  }
  const double grad_norm = optim::clip_grad_norm(model.parameters(), grad_clip);
  double loss = r.loss.item(), acc = r.accuracy;
  if (comm) {  // every rank has the same number of residues: the global means are the means
    std::vector<double> m{loss, acc};
    comm->all_reduce_sum(m);
    loss = m[0] / comm->world();
    acc = m[1] / comm->world();
  }
  const bool good = std::isfinite(loss) && std::isfinite(grad_norm);
  if (good) opt.step(lr);
  return {loss, acc, grad_norm, good};
}

int train_run(const Config& cfg, bool resume, int64_t stop_at, dist::Communicator* comm) {
  const Device device = resolve_device(cfg.device);
  // Data parallel: rank 0 (the lead) alone writes the run directory and prints.
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  const bool lead = rank == 0;
  PF_CHECK(!comm || device == Device::CUDA,
           "data-parallel training (--gpus) needs device cuda, got " << device_name(device));
  PF_CHECK(cfg.train.batch_size % world == 0, "train.batch_size " << cfg.train.batch_size
                                                << " must be a multiple of the number of GPUs " << world);
  const bool packed = packed_batches(cfg);
  PF_CHECK(!comm || !packed, "data-parallel training (--gpus) of packed batches (data.n_res_min < n_res_max or "
                             "train.batch_tokens > 0) is not supported yet");
  const DType dtype = precision_dtype(cfg.train.precision, device);
  // bf16: bf16 activations over the fp32 master weights (framework/precision.h)
  const AutocastGuard autocast(cfg.train.precision == "bf16" ? DType::BF16 : dtype);
  const auto& t = cfg.train;
  const anomaly::EnableGuard anomaly_mode(t.detect_anomaly);
  const DeterministicGuard deterministic_mode(t.deterministic);
  if (lead) prepare_run_dir(cfg.out);
  const std::string ckpt_path = cfg.out + "/checkpoint.h5";
  PF_CHECK(!resume || fs::exists(ckpt_path), "--resume: no checkpoint at " << ckpt_path);

  ChainSet train_set, val_set;
  load_data(cfg, train_set, val_set);

  models::PairBiasModel model(cfg.model, t.seed);
  model.to(dtype);
  model.to(device);
  const auto params = model.named_parameters();
  int64_t n_params = 0;
  for (const auto& [name, p] : params) n_params += p.numel();
  optim::AdamW opt(params, optim::decay_mask(params, kEmbeddings),
                   {t.lr, 0.9, 0.999, 1e-8, t.weight_decay});
  BatchSampler sampler = t.batch_tokens > 0 ? BatchSampler(train_set.lengths, t.batch_tokens, t.seed)
                                             : BatchSampler(train_set.S, t.batch_size, t.seed);

  TrainState st;
  int64_t saved_step = -1;  // the step of the checkpoint on disk (-1: none yet)
  if (resume) {
    st = load_checkpoint(ckpt_path, cfg, model, &opt);
    PF_CHECK(st.cursor <= train_set.S, "checkpoint " << ckpt_path << ": sampler_cursor " << st.cursor
                                                     << " is past the " << train_set.S << " training chains");
    sampler.set_state(st.epoch, st.cursor);
    saved_step = st.step;
    std::printf("resumed from %s at step %lld\n", ckpt_path.c_str(), static_cast<long long>(st.step));
  }
  if (lead) write_text_file(cfg.out + "/config.yaml", config_to_yaml(cfg));
  MetricsLog log(lead ? cfg.out + "/metrics.jsonl" : "", resume, st.step);
  // Gradients averaged over the ranks in buckets that start while the backward still runs.
  std::unique_ptr<dist::GradientSync> grad_sync;
  if (comm) grad_sync = std::make_unique<dist::GradientSync>(*comm, model.parameters());
  std::printf("model: %lld parameters, %s bias, %s on %s; data: %d train / %d val chains of %s residues, "
              "task %s; batches %s\n",
              static_cast<long long>(n_params), cfg.model.attn_bias.c_str(), dtype_name(dtype),
              device_name(device), train_set.S, val_set.S,
              (cfg.data.n_res_min == cfg.data.n_res_max
                   ? std::to_string(train_set.N)
                   : std::to_string(cfg.data.n_res_min) + ".." + std::to_string(cfg.data.n_res_max))
                  .c_str(),
              train_set.task.c_str(),
              t.batch_tokens > 0 ? ("packed, up to " + std::to_string(t.batch_tokens) + " residues").c_str()
                                 : ("of " + std::to_string(t.batch_size) + (packed ? " chains, packed" : " chains")).c_str());

  int64_t timed_tokens = 0;  // residues of the timed steps (all ranks)
  double train_seconds = 0;
  int64_t timed_steps = 0;
  EvalResult last_eval{NAN, NAN};
  auto kept = [&] {
    std::ostringstream os;
    if (saved_step >= 0) os << "the last good checkpoint (step " << saved_step << ") is kept at " << ckpt_path;
    else os << "no checkpoint was written yet";
    return os.str();
  };
  auto checkpoint = [&] {
    // Never replace a good checkpoint with non-finite weights or moments.
    std::string bad = first_non_finite(params);
    if (bad.empty()) bad = first_non_finite(opt.state());
    if (!bad.empty())
      PF_FAIL("parameter or moment '" << bad << "' holds a NaN or an infinity after step " << st.step
                                      << ", so no checkpoint is written: " << kept()
                                      << " (try a lower train.lr, or train.grad_clip > 0)");
    try {
      if (lead) save_checkpoint(ckpt_path, cfg, model, opt, st);
    } catch (const Error& e) {  // a full disk, an unwritable directory: say what is kept
      std::string why = e.what();
      std::replace(why.begin(), why.end(), '\n', ' ');  // HDF5's own messages may hold newlines
      PF_FAIL("the checkpoint of step " << st.step << " could not be written (" << why << "); " << kept());
    }
    saved_step = st.step;
    std::printf("checkpoint step %lld -> %s\n", static_cast<long long>(st.step), ckpt_path.c_str());
    std::fflush(stdout);
    if (lead) write_plots(cfg.out, log, model);
  };
  const int64_t last_step = stop_at > 0 ? std::min<int64_t>(stop_at, t.steps) : t.steps;
  // The next batch is drawn and gathered on a worker thread while the current step runs (the
  // device work of a step is queued asynchronously; the host work overlaps it). Each batch
  // carries the sampler state of its own draw, so a checkpoint resumes at the next batch.
  const auto prepare = [&] {
    std::vector<int> idx = sampler.next();
    const int64_t epoch = sampler.epoch(), cursor = sampler.cursor();
    return std::async(std::launch::async, [&train_set, idx = std::move(idx), packed, world, rank, epoch, cursor] {
      HostBatch h = gather_host(train_set, idx, packed, world, rank);
      h.epoch = epoch;
      h.cursor = cursor;
      return h;
    });
  };
  std::future<HostBatch> next_batch;
  while (st.step < last_step) {
    const auto t0 = Clock::now();
    if (!next_batch.valid()) next_batch = prepare();
    const HostBatch batch = next_batch.get();
    if (st.step + 1 < last_step) next_batch = prepare();
    for (int s : batch.global_idx) timed_tokens += train_set.length(s);
    const double lr = optim::lr_at(st.step, t.lr, t.min_lr, t.warmup, t.steps);
    const StepResult r = train_step(model, opt, batch, packed, device, lr, t.grad_clip, grad_sync.get(), comm);
    const double loss = r.loss, acc = r.accuracy, grad_norm = r.grad_norm;
    // A skipped step is counted; the batch and the learning-rate schedule move on as after an
    // update.
    const bool good = r.updated;
    if (good) {
      st.bad_in_row = 0;
    } else {
      ++st.skipped;
      ++st.bad_in_row;
    }
    train_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    ++timed_steps;
    ++st.step;
    st.epoch = batch.epoch;
    st.cursor = batch.cursor;

    if (!good) {  // always logged
      std::printf("step %6lld  SKIPPED: loss %.4g, grad_norm %.4g not finite, no update (%lld in a row, "
                  "%lld in all; the run stops at train.max_bad_steps = %d in a row)\n",
                  static_cast<long long>(st.step), loss, grad_norm, static_cast<long long>(st.bad_in_row),
                  static_cast<long long>(st.skipped), t.max_bad_steps);
      std::fflush(stdout);
      log.write(JsonLine().add("step", st.step).add("loss", loss).add("grad_norm", grad_norm)
                    .add("lr", lr).add("skipped", true).add("bad_in_row", st.bad_in_row)
                    .add("skipped_steps", st.skipped));
      if (st.bad_in_row >= t.max_bad_steps)
        PF_FAIL(st.bad_in_row << " steps in a row (the last at step " << st.step
                          << ") had a non-finite loss or gradient norm (train.max_bad_steps = " << t.max_bad_steps
                          << "); stopped: " << kept() << " (try a lower train.lr, or train.grad_clip > 0)");
    } else if (st.step % t.log_every == 0 || st.step == t.steps) {
      const double tps = timed_tokens / train_seconds;
      const double eta = (t.steps - st.step) * train_seconds / timed_steps;
      std::printf("step %6lld  loss %.4f  acc %.3f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %.0fs\n",
                  static_cast<long long>(st.step), loss, acc, lr, grad_norm, tps, eta);
      std::fflush(stdout);
      log.write(JsonLine().add("step", st.step).add("loss", loss).add("acc", acc)
                    .add("lr", lr).add("grad_norm", grad_norm).add("tokens_per_s", tps)
                    .add("skipped_steps", st.skipped));
    }
    if (st.step % t.eval_every == 0 || st.step == t.steps) {
      last_eval = evaluate_set(model, val_set, t.batch_size, device, comm, t.batch_tokens);
      std::printf("eval  step %6lld  val_loss %.4f  val_acc %.4f\n", static_cast<long long>(st.step),
                  last_eval.loss, last_eval.accuracy);
      std::fflush(stdout);
      log.write(JsonLine().add("step", st.step).add("val_loss", last_eval.loss)
                    .add("val_acc", last_eval.accuracy));
    }
    if (st.step % t.checkpoint_every == 0 || st.step == last_step) checkpoint();
  }
  if (timed_steps == 0) {  // resumed a finished run: report its state
    last_eval = evaluate_set(model, val_set, t.batch_size, device, comm, t.batch_tokens);
    checkpoint();
  }
  const double tps = timed_steps ? timed_tokens / train_seconds : 0.0;
  std::printf("%s\n", JsonLine().add("mode", "train").add("val_loss", last_eval.loss)
                          .add("val_acc", last_eval.accuracy).add("tokens_per_s", tps)
                          .add("steps", st.step).add("skipped_steps", st.skipped).add("out", cfg.out)
                          .str().c_str());
  return 0;
}

}  // namespace

int train(const Config& cfg, bool resume, int64_t stop_at, dist::Communicator* comm) {
  try {
    return train_run(cfg, resume, stop_at, comm);
  } catch (const CudaOutOfMemory& e) {  // say which settings drive the sizes
    const auto& m = cfg.model;
    PF_FAIL(e.what() << ". Per layer, the pair representation and bias hold train.batch_size × data.n_res² × "
                        "(model.c_z + model.n_heads) values = "
                     << cfg.train.batch_size << " × " << cfg.data.n_res << "² × (" << m.c_z << " + " << m.n_heads
                     << "), the other activations train.batch_size × data.n_res × model.d_ff = "
                     << cfg.train.batch_size << " × " << cfg.data.n_res << " × " << m.d_ff
                     << "; lower train.batch_size or data.n_res, or use train.precision: bf16");
  }
}

int train_data_parallel(const Config& cfg, bool resume, int gpus) {
  PF_CHECK(cfg.device != "cpu", "--gpus " << gpus << " trains on GPUs, but device is cpu");
  prepare_data(cfg);  // once, before the workers start (they only read the files)
  return run_data_parallel(gpus, [&](dist::Communicator& comm) { return train(cfg, resume, -1, &comm); });
}

}  // namespace pf::run
