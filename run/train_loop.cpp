// Training, top to bottom: the parts of the loop in the order a step uses them (batches,
// counters, logs, checkpoints), then train_run: the set-up and the loop with its log / eval /
// checkpoint cadence. The step itself (every stage one call, eager or replayed from a CUDA
// graph) is run/train_step.h's.
#include "run/train_loop.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <new>
#include <sstream>

#include "framework/allocator.h"
#include "framework/anomaly.h"
#include "framework/autograd.h"
#include "framework/deterministic.h"
#include "framework/distributed.h"
#include "framework/interrupt.h"
#include "framework/optim.h"
#include "framework/precision.h"
#include "framework/run_dir.h"
#include "run/batches.h"
#include "run/checkpoint.h"
#include "run/environment.h"
#include "run/evaluate.h"
#include "run/launch.h"
#include "run/plots.h"
#include "run/train_step.h"

namespace pf::run {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// ---- the loop's parts, in the order one step uses them ------------------------------------------

// The batches of the run. The next batch is drawn and gathered on a worker thread while the
// current step runs (the device work of a step is queued asynchronously; the host work overlaps
// it). Each batch carries the sampler state of its own draw, so a checkpoint resumes at the next
// batch.
class BatchQueue {
 public:
  BatchQueue(const ChainSet& set, BatchSampler& sampler, bool packed, int world, int rank)
      : set_(set), sampler_(sampler), packed_(packed), world_(world), rank_(rank) {}

  // The next batch; with more_to_come, the one after it starts gathering at once.
  HostBatch next(bool more_to_come) {
    if (!pending_.valid()) pending_ = draw();
    HostBatch batch = pending_.get();
    if (more_to_come) pending_ = draw();
    return batch;
  }

 private:
  std::future<HostBatch> draw() {
    std::vector<int> idx = sampler_.next();
    const int64_t epoch = sampler_.epoch(), cursor = sampler_.cursor();
    return std::async(std::launch::async, [&set = set_, idx = std::move(idx), packed = packed_,
                                           world = world_, rank = rank_, epoch, cursor] {
      HostBatch h = gather_host(set, idx, packed, world, rank);
      h.epoch = epoch;
      h.cursor = cursor;
      return h;
    });
  }

  const ChainSet& set_;
  BatchSampler& sampler_;
  const bool packed_;
  const int world_, rank_;
  std::future<HostBatch> pending_;
};

// The step counters after one step. A skipped step is counted; the batch and the learning-rate
// schedule move on as after an update.
void count_step(TrainState& st, const StepResult& r, const HostBatch& batch) {
  if (r.updated) {
    st.bad_in_row = 0;
  } else {
    ++st.skipped;
    ++st.bad_in_row;
  }
  ++st.step;
  st.epoch = batch.epoch;
  st.cursor = batch.cursor;
}

// Residues and seconds of the steps this process ran (a resumed run counts from its resume).
struct Throughput {
  int64_t tokens = 0;  // residues of the timed steps (all ranks)
  double seconds = 0;
  int64_t steps = 0;

  void add(const ChainSet& set, const HostBatch& batch, Clock::time_point start) {
    for (int s : batch.global_idx) tokens += set.length(s);
    seconds += std::chrono::duration<double>(Clock::now() - start).count();
    ++steps;
  }
  double tokens_per_s() const { return steps ? tokens / seconds : 0.0; }
  double eta_seconds(int64_t steps_left) const { return steps_left * seconds / steps; }
};

// The checkpoint of the run directory and the step it holds. Writing it also redraws the plots.
class Checkpoints {
 public:
  Checkpoints(std::string path, const Config& cfg, const models::PairBiasModel& model,
              const optim::AdamW& opt, const MetricsLog& log, bool lead)
      : path_(std::move(path)), cfg_(cfg), model_(model), opt_(opt), log_(log), lead_(lead) {}

  const std::string& path() const { return path_; }
  bool holds(int64_t step) const { return saved_step_ == step; }
  void resumed_at(int64_t step) { saved_step_ = step; }

  // What a failed run leaves behind, for its error message.
  std::string kept() const {
    std::ostringstream os;
    if (saved_step_ >= 0)
      os << "the last good checkpoint (step " << saved_step_ << ") is kept at " << path_;
    else
      os << "no checkpoint was written yet";
    return os.str();
  }

  void write(const TrainState& st) {
    // Never replace a good checkpoint with non-finite weights or moments.
    std::string bad = first_non_finite(model_.named_parameters());
    if (bad.empty()) bad = first_non_finite(opt_.state());
    if (!bad.empty())
      PF_FAIL("parameter or moment '" << bad << "' holds a NaN or an infinity after step " << st.step
                                      << ", so no checkpoint is written: " << kept()
                                      << " (try a lower train.lr, or train.grad_clip > 0)");
    try {
      if (lead_) save_checkpoint(path_, cfg_, model_, opt_, st);
    } catch (const Error& e) {  // a full disk, an unwritable directory: say what is kept
      std::string why = e.what();
      std::replace(why.begin(), why.end(), '\n', ' ');  // HDF5's own messages may hold newlines
      PF_FAIL("the checkpoint of step " << st.step << " could not be written (" << why << "); " << kept());
    }
    saved_step_ = st.step;
    std::printf("checkpoint step %lld -> %s\n", static_cast<long long>(st.step), path_.c_str());
    std::fflush(stdout);
    if (lead_) write_plots(cfg_.out, log_, model_);
  }

 private:
  const std::string path_;
  const Config& cfg_;
  const models::PairBiasModel& model_;
  const optim::AdamW& opt_;
  const MetricsLog& log_;
  const bool lead_;
  int64_t saved_step_ = -1;  // the step of the checkpoint on disk (-1: none yet)
};

// A skipped step is always logged; train.max_bad_steps of them in a row stop the run.
void log_skipped_step(const TrainState& st, const StepResult& r, double lr, const TrainConfig& t,
                      MetricsLog& log, const Checkpoints& ckpt) {
  std::printf(
      "step %6lld  SKIPPED: loss %.4g, grad_norm %.4g not finite, no update (%lld in a row, "
      "%lld in all; the run stops at train.max_bad_steps = %d in a row)\n",
      static_cast<long long>(st.step), r.loss, r.grad_norm, static_cast<long long>(st.bad_in_row),
      static_cast<long long>(st.skipped), t.max_bad_steps);
  std::fflush(stdout);
  log.write(JsonLine()
                .add("step", st.step)
                .add("loss", r.loss)
                .add("grad_norm", r.grad_norm)
                .add("lr", lr)
                .add("skipped", true)
                .add("bad_in_row", st.bad_in_row)
                .add("skipped_steps", st.skipped));
  if (st.bad_in_row >= t.max_bad_steps)
    PF_FAIL(st.bad_in_row << " steps in a row (the last at step " << st.step
                          << ") had a non-finite loss or gradient norm (train.max_bad_steps = "
                          << t.max_bad_steps << "); stopped: " << ckpt.kept()
                          << " (try a lower train.lr, or train.grad_clip > 0)");
}

void log_step(const TrainState& st, const StepResult& r, double lr, const TrainConfig& t,
              const Throughput& speed, MetricsLog& log) {
  const double tps = speed.tokens_per_s();
  const double eta = speed.eta_seconds(t.steps - st.step);
  std::printf("step %6lld  loss %.4f  acc %.3f  lr %.2e  grad_norm %.3f  %.0f tok/s  ETA %.0fs\n",
              static_cast<long long>(st.step), r.loss, r.accuracy, lr, r.grad_norm, tps, eta);
  std::fflush(stdout);
  log.write(JsonLine()
                .add("step", st.step)
                .add("loss", r.loss)
                .add("acc", r.accuracy)
                .add("lr", lr)
                .add("grad_norm", r.grad_norm)
                .add("tokens_per_s", tps)
                .add("skipped_steps", st.skipped));
}

void log_eval(int64_t step, const EvalResult& e, MetricsLog& log) {
  std::printf("eval  step %6lld  val_loss %.4f  val_acc %.4f\n", static_cast<long long>(step), e.loss,
              e.accuracy);
  std::fflush(stdout);
  log.write(JsonLine().add("step", step).add("val_loss", e.loss).add("val_acc", e.accuracy));
}

// One line on what is trained on what.
void print_run_summary(const Config& cfg, const nn::NamedTensors& params, DType dtype, Device device,
                       const ChainSet& train_set, const ChainSet& val_set, bool packed) {
  const auto& t = cfg.train;
  int64_t n_params = 0;
  for (const auto& [name, p] : params) n_params += p.numel();
  std::printf(
      "model: %lld parameters, %s bias, %s on %s; data: %d train / %d val chains of %s residues, "
      "task %s; batches %s\n",
      static_cast<long long>(n_params), cfg.model.attn_bias.c_str(), dtype_name(dtype), device_name(device),
      train_set.S, val_set.S,
      (cfg.data.n_res_min == cfg.data.n_res_max
           ? std::to_string(train_set.N)
           : std::to_string(cfg.data.n_res_min) + ".." + std::to_string(cfg.data.n_res_max))
          .c_str(),
      train_set.task.c_str(),
      t.batch_tokens > 0
          ? ("packed, up to " + std::to_string(t.batch_tokens) + " residues").c_str()
          : ("of " + std::to_string(t.batch_size) + (packed ? " chains, packed" : " chains")).c_str());
}

// ---- the run: set-up, then the loop --------------------------------------------------------------

int train_run(const Config& cfg, bool resume, int64_t stop_at, dist::Communicator* comm) {
  const Device device = resolve_device(cfg.device);
  // Data parallel: rank 0 (the lead) alone writes the run directory and prints.
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  const bool lead = rank == 0;
  PF_CHECK(!comm || device == Device::CUDA,
           "data-parallel training (--gpus) needs device cuda, got " << device_name(device));
  PF_CHECK(cfg.train.batch_size % world == 0, "train.batch_size "
                                                  << cfg.train.batch_size
                                                  << " must be a multiple of the number of GPUs " << world);
  const bool packed = packed_batches(cfg);
  PF_CHECK(!comm || !packed,
           "data-parallel training (--gpus) of packed batches (data.n_res_min < n_res_max or "
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
  optim::AdamW opt = training_optimizer(model, t);
  BatchSampler sampler = t.batch_tokens > 0 ? BatchSampler(train_set.lengths, t.batch_tokens, t.seed)
                                            : BatchSampler(train_set.S, t.batch_size, t.seed);

  TrainState st;
  if (resume) {
    st = load_checkpoint(ckpt_path, cfg, model, &opt);
    PF_CHECK(st.cursor <= train_set.S, "checkpoint " << ckpt_path << ": sampler_cursor " << st.cursor
                                                     << " is past the " << train_set.S << " training chains");
    sampler.set_state(st.epoch, st.cursor);
    std::printf("resumed from %s at step %lld\n", ckpt_path.c_str(), static_cast<long long>(st.step));
  }
  if (lead) write_text_file(cfg.out + "/config.yaml", config_to_yaml(cfg));
  MetricsLog log(lead ? cfg.out + "/metrics.jsonl" : "", resume, st.step);
  Checkpoints ckpt(ckpt_path, cfg, model, opt, log, lead);
  if (resume) ckpt.resumed_at(st.step);
  // Gradients averaged over the ranks in buckets that start while the backward still runs.
  std::unique_ptr<dist::GradientSync> grad_sync;
  if (comm) grad_sync = std::make_unique<dist::GradientSync>(*comm, model.parameters());
  print_run_summary(cfg, params, dtype, device, train_set, val_set, packed);
  TrainStep train_step(model, opt, cfg, device, grad_sync.get(), comm);

  BatchQueue batches(train_set, sampler, packed, world, rank);
  Throughput speed;
  EvalResult last_eval{NAN, NAN};
  const int64_t last_step = stop_at > 0 ? std::min<int64_t>(stop_at, t.steps) : t.steps;
  while (st.step < last_step) {
    const auto t0 = Clock::now();
    const HostBatch batch = batches.next(/*more_to_come=*/st.step + 1 < last_step);
    const double lr = optim::lr_at(st.step, t.lr, t.min_lr, t.warmup, t.steps);
    const StepResult r = train_step(batch, lr);
    count_step(st, r, batch);
    speed.add(train_set, batch, t0);

    if (!r.updated) {
      log_skipped_step(st, r, lr, t, log, ckpt);
    } else if (st.step % t.log_every == 0 || st.step == t.steps) {
      log_step(st, r, lr, t, speed, log);
    }
    if (st.step % t.eval_every == 0 || st.step == t.steps) {
      last_eval = evaluate_set(model, val_set, t.batch_size, device, comm, t.batch_tokens);
      log_eval(st.step, last_eval, log);
    }
    if (st.step % t.checkpoint_every == 0 || st.step == last_step) ckpt.write(st);
    if (r.stop_signal) {  // SIGINT / SIGTERM: this step's checkpoint, then stop
      if (!ckpt.holds(st.step)) ckpt.write(st);
      std::fflush(stdout);
      if (lead)
        std::fprintf(
            stderr,
            "train: stopped by %s after step %lld: checkpoint written to %s; continue with --resume\n",
            interrupt_name(r.stop_signal), static_cast<long long>(st.step), ckpt.path().c_str());
      return 128 + r.stop_signal;
    }
  }
  if (speed.steps == 0) {  // resumed a finished run: report its state
    last_eval = evaluate_set(model, val_set, t.batch_size, device, comm, t.batch_tokens);
    ckpt.write(st);
  }
  std::printf("%s\n", JsonLine()
                          .add("mode", "train")
                          .add("val_loss", last_eval.loss)
                          .add("val_acc", last_eval.accuracy)
                          .add("tokens_per_s", speed.tokens_per_s())
                          .add("steps", st.step)
                          .add("skipped_steps", st.skipped)
                          .add("out", cfg.out)
                          .str()
                          .c_str());
  return 0;
}

}  // namespace

int train(const Config& cfg, bool resume, int64_t stop_at, dist::Communicator* comm) {
  // Out of memory: the message, then which settings drive the sizes.
  const auto drivers = [&cfg](const std::string& what, const char* lower) {
    const auto& m = cfg.model;
    std::ostringstream os;
    os << what
       << ". Per layer, the pair representation and bias hold train.batch_size × data.n_res² × "
          "(model.c_z + model.n_heads) values = "
       << cfg.train.batch_size << " × " << cfg.data.n_res << "² × (" << m.c_z << " + " << m.n_heads
       << "), the other activations train.batch_size × data.n_res × model.d_ff = " << cfg.train.batch_size
       << " × " << cfg.data.n_res << " × " << m.d_ff << "; lower train.batch_size or data.n_res" << lower;
    return os.str();
  };
  try {
    return train_run(cfg, resume, stop_at, comm);
  } catch (const CudaOutOfMemory& e) {
    PF_FAIL(drivers(e.what(), ", or use train.precision: bf16"));
  } catch (const HostOutOfMemory& e) {
    PF_FAIL(drivers(e.what(), ", or model.d_ff"));
  } catch (const std::bad_alloc&) {  // a host container (data, batches): its size is not known here
    PF_FAIL(
        drivers("out of host memory (std::bad_alloc); the data sets hold (data.n_train + data.n_val) × "
                "data.n_res_max residues = (" +
                    std::to_string(cfg.data.n_train) + " + " + std::to_string(cfg.data.n_val) + ") × " +
                    std::to_string(cfg.data.n_res_max),
                ", data.n_train or data.n_val"));
  }
}

int train_data_parallel(const Config& cfg, bool resume, int gpus) {
  PF_CHECK(cfg.device != "cpu", "--gpus " << gpus << " trains on GPUs, but device is cpu");
  prepare_data(cfg);  // once, before the workers start (they only read the files)
  return run_data_parallel(gpus, [&](dist::Communicator& comm) { return train(cfg, resume, -1, &comm); });
}

}  // namespace pf::run
