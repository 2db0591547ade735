#include "run/modes.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <iostream>
#include <sstream>
#include <thread>

#include "framework/allocator.h"
#include "framework/anomaly.h"
#include "framework/autograd.h"
#include "framework/checkpoint.h"
#include "framework/deterministic.h"
#include "framework/distributed.h"
#include "framework/gradcheck.h"
#include "framework/optim.h"
#include "framework/plot.h"
#include "framework/precision.h"
#include "framework/run_dir.h"
#include "run/launch.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/device_info.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace pf::run {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// The CUDA backend of the ops is a separate piece of work; until it is compiled in, "auto"
// stays on the CPU and "cuda" says why it cannot be had.
#ifdef PF_CUDA_OPS
constexpr bool kCudaOps = true;
#else
constexpr bool kCudaOps = false;
#endif

Device resolve_device(const std::string& requested) {
  if (requested == "cpu") return Device::CPU;
  const bool gpu = cuda_available();
  if (requested == "auto") return gpu && kCudaOps ? Device::CUDA : Device::CPU;
  PF_CHECK(requested == "cuda", "device must be auto, cpu or cuda, found '" << requested << "'");
  PF_CHECK(gpu, "device 'cuda' requested but no CUDA device is available (see train --check-env)");
  PF_CHECK(kCudaOps, "device 'cuda' requested but this build's ops have no CUDA backend yet; "
                     "use --device cpu");
  return Device::CUDA;
}

int check_env() {
  const unsigned hw = std::thread::hardware_concurrency();
  int omp_threads = 1;
#ifdef _OPENMP
  omp_threads = omp_get_max_threads();
#endif
  std::printf("CPU: %u hardware threads, OpenMP %s (%d threads)\n", hw,
#ifdef _OPENMP
              "on",
#else
              "off",
#endif
              omp_threads);
  JsonLine j;
  j.add("mode", "check-env").add("cpu_threads", static_cast<int64_t>(hw)).add("omp_threads", omp_threads);
#ifdef PF_WITH_CUDA
  const auto info = kernels::cuda::device_info();
  std::printf("CUDA toolkit: runtime %d, driver %d\n", info.runtime_version, info.driver_version);
  if (info.available) {
    std::printf("GPU 0: %s, compute capability %d.%d, %d SMs, %.1f GiB (%d device(s))\n",
                info.name.c_str(), info.cc_major, info.cc_minor, info.sm_count,
                info.total_memory / 1073741824.0, info.device_count);
  } else {
    std::printf("GPU: none (%s)\n", info.reason.c_str());
  }
  std::printf("CUDA ops backend: %s\n", kCudaOps ? "built" : "not built (CPU training only)");
  j.add("cuda_toolkit", true).add("cuda_runtime", info.runtime_version)
      .add("cuda_driver", info.driver_version).add("gpu", info.available ? info.name : "none");
  if (info.available) j.add("compute_capability", std::to_string(info.cc_major) + "." + std::to_string(info.cc_minor));
#else
  std::printf("CUDA toolkit: not found at build time (CPU-only build)\n");
  j.add("cuda_toolkit", false).add("gpu", "none");
#endif
  std::printf("%s\n", j.str().c_str());
  return 0;
}

// ---- batches and evaluation ------------------------------------------------------------------

BatchTensors to_tensors(const Batch& batch, const ModelConfig& cfg, Device device) {
  BatchTensors t;
  t.tokens = Tensor::from_vector(batch.tokens, {batch.B, batch.N}, DType::I32, device);
  t.labels = Tensor::from_vector(batch.labels, {batch.B, batch.N}, DType::I32, device);
  // A relpos model reads no pair features: its bias is the table inside each layer.
  if (cfg.attn_bias == "pair") t.pair = models::pair_features(batch.coords.data(), batch.B, batch.N, cfg, device);
  return t;
}

PackedTensors to_tensors(const PackedBatch& batch, const ModelConfig& cfg, Device device) {
  PackedTensors t;
  t.tokens = Tensor::from_vector(batch.tokens, {batch.T()}, DType::I32, device);
  t.labels = Tensor::from_vector(batch.labels, {batch.T()}, DType::I32, device);
  t.packing.cu_seqlens = batch.cu_seqlens;
  if (cfg.attn_bias == "pair")
    t.packing.pair = models::packed_pair_features(batch.coords.data(), batch.cu_seqlens, cfg, device);
  return t;
}

bool packed_batches(const Config& cfg) {
  return cfg.train.batch_tokens > 0 || cfg.data.n_res_min != cfg.data.n_res_max;
}

namespace {

// A batch prepared on the host: its global sample indices, this rank's rows of them gathered
// (dense or packed), and the sampler's state right after the indices were drawn (what a
// checkpoint taken after this batch's step records).
struct HostBatch {
  std::vector<int> global_idx;
  Batch dense;
  PackedBatch packed;
  int64_t epoch = 0, cursor = 0;
};

HostBatch gather_host(const ChainSet& set, std::vector<int> idx, bool packed, int world, int rank) {
  HostBatch h;
  h.global_idx = std::move(idx);
  std::vector<int> mine = h.global_idx;
  if (world > 1) {  // this rank's contiguous slice of the global batch
    const size_t per = mine.size() / world;
    mine = std::vector<int>(mine.begin() + rank * per, mine.begin() + (rank + 1) * per);
  }
  if (packed) h.packed = gather_packed(set, mine);
  else h.dense = gather_batch(set, mine);
  return h;
}

// The loss of a host batch, uploaded to `device`.
models::LossResult host_batch_loss(const models::PairBiasModel& model, const HostBatch& h, bool packed,
                                   Device device) {
  if (packed) {
    const PackedTensors b = to_tensors(h.packed, model.config(), device);
    return models::model_loss(model, b.tokens, b.packing, b.labels);
  }
  const BatchTensors b = to_tensors(h.dense, model.config(), device);
  return models::model_loss(model, b.tokens, b.pair, b.labels);
}

// The loss of the samples idx of set, dense or packed; *tokens = the residues it covers.
models::LossResult batch_loss(const models::PairBiasModel& model, const ChainSet& set, const std::vector<int>& idx,
                              bool packed, Device device, int64_t* tokens) {
  const HostBatch h = gather_host(set, idx, packed, 1, 0);
  *tokens = packed ? h.packed.T() : int64_t{h.dense.B} * h.dense.N;
  return host_batch_loss(model, h, packed, device);
}

}  // namespace

EvalResult evaluate_set(const models::PairBiasModel& model, const ChainSet& set, int batch_size,
                        Device device, dist::Communicator* comm, int64_t batch_tokens) {
  NoGradGuard no_grad;
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  const int begin = static_cast<int>(int64_t{set.S} * rank / world);
  const int end = static_cast<int>(int64_t{set.S} * (rank + 1) / world);
  if (!set.fixed_length()) {  // packed batches; every residue weighs the same
    double sums[3] = {0, 0, 0};  // loss·T, correct, T
    for (int start = begin; start < end;) {
      std::vector<int> idx;
      int64_t used = 0;
      for (int s = start; s < end; ++s) {  // batch_size chains, or what fits in batch_tokens
        if (batch_tokens > 0 ? !idx.empty() && used + set.length(s) > batch_tokens
                             : static_cast<int>(idx.size()) == batch_size)
          break;
        idx.push_back(s);
        used += set.length(s);
      }
      int64_t T = 0;
      const auto r = batch_loss(model, set, idx, true, device, &T);
      sums[0] += r.loss.item() * T;
      sums[1] += r.accuracy * T;
      sums[2] += T;
      start += static_cast<int>(idx.size());
    }
    if (comm) {
      std::vector<double> v(sums, sums + 3);
      comm->all_reduce_sum(v);
      std::copy(v.begin(), v.end(), sums);
    }
    return {sums[0] / sums[2], sums[1] / sums[2]};
  }
  double loss_sum = 0, correct = 0;
  for (int start = begin; start < end; start += batch_size) {
    std::vector<int> idx;
    for (int s = start; s < std::min(end, start + batch_size); ++s) idx.push_back(s);
    const BatchTensors b = to_tensors(gather_batch(set, idx), model.config(), device);
    const auto r = models::model_loss(model, b.tokens, b.pair, b.labels);
    loss_sum += r.loss.item() * idx.size();
    correct += r.accuracy * idx.size();
  }
  if (comm) {
    std::vector<double> sums{loss_sum, correct};
    comm->all_reduce_sum(sums);
    loss_sum = sums[0];
    correct = sums[1];
  }
  return {loss_sum / set.S, correct / set.S};
}

namespace {

DType precision_dtype(const std::string& precision, Device device) {
  if (precision == "fp32") return DType::F32;
  if (precision == "fp64") return DType::F64;
  PF_CHECK(device == Device::CUDA, "train.precision '" << precision
                                                       << "' needs the CUDA backend; on the CPU use fp32 or fp64");
  return DType::F32;  // bf16 keeps fp32 master weights
}

}  // namespace

void prepare_data(const Config& cfg) {
  const auto& d = cfg.data;
  const int K = cfg.model.n_types;
  const std::string residues = d.n_res_min == d.n_res_max
                                   ? std::to_string(d.n_res_max)
                                   : std::to_string(d.n_res_min) + ".." + std::to_string(d.n_res_max);
  if (ensure_chains(d.train, ChainSpec{d.n_train, d.n_res_min, d.n_res_max, K, d.seed, "train", d.task}))
    std::printf("generated %d training chains of %s residues (task %s) -> %s\n", d.n_train, residues.c_str(),
                d.task.c_str(), d.train.c_str());
  if (ensure_chains(d.val, ChainSpec{d.n_val, d.n_res_min, d.n_res_max, K, d.seed, "val", d.task}))
    std::printf("generated %d validation chains of %s residues (task %s) -> %s\n", d.n_val, residues.c_str(),
                d.task.c_str(), d.val.c_str());
}

namespace {

void load_data(const Config& cfg, ChainSet& train_set, ChainSet& val_set) {
  prepare_data(cfg);
  train_set = read_chains(cfg.data.train);
  val_set = read_chains(cfg.data.val);
}

const std::vector<std::string> kEmbeddings = {"embed.weight", "pair.rel.weight", "pair.dist.weight"};

void write_model_attrs(H5Writer& w, const ModelConfig& m) {
  w.write_attr("/model", "n_types", m.n_types);
  w.write_attr("/model", "d_model", m.d_model);
  w.write_attr("/model", "n_heads", m.n_heads);
  w.write_attr("/model", "n_layers", m.n_layers);
  w.write_attr("/model", "d_ff", m.d_ff);
  w.write_attr("/model", "c_z", m.c_z);
  w.write_attr("/model", "relpos_clip", m.relpos_clip);
  w.write_attr("/model", "dist_bins", m.dist_bins);
  w.write_attr("/model", "dist_max", m.dist_max);
  w.write_attr("/model", "attn_bias", m.attn_bias);
}

// Refuses a checkpoint whose architecture differs from the config, naming the first key.
void check_model_attrs(const H5Reader& r, const ModelConfig& m) {
  const std::pair<const char*, int64_t> ints[] = {
      {"n_types", m.n_types}, {"d_model", m.d_model}, {"n_heads", m.n_heads},
      {"n_layers", m.n_layers}, {"d_ff", m.d_ff}, {"c_z", m.c_z},
      {"relpos_clip", m.relpos_clip}, {"dist_bins", m.dist_bins}};
  for (const auto& [key, want] : ints) {
    const int64_t found = r.attr_int("/model", key);
    PF_CHECK(found == want, "checkpoint " << r.path() << ": model." << key << " is " << found
                                          << " but the config says " << want);
  }
  const double dmax = r.attr_double("/model", "dist_max");
  PF_CHECK(dmax == m.dist_max, "checkpoint " << r.path() << ": model.dist_max is " << dmax
                                              << " but the config says " << m.dist_max);
  // Checkpoints written before attn_bias existed are pair models.
  const std::string bias = r.has_attr("/model", "attn_bias") ? r.attr_string("/model", "attn_bias") : "pair";
  PF_CHECK(bias == m.attn_bias, "checkpoint " << r.path() << ": model.attn_bias is " << bias
                                               << " but the config says " << m.attn_bias);
}

// Everything besides the weights and the optimizer that a resumed run needs to continue the exact
// same sequence. The training loop draws no random numbers besides the sampler's shuffles (no
// dropout), and each shuffle is a pure function of (train.seed, epoch): (epoch, cursor) is the
// whole random state.
struct TrainState {
  int64_t step = 0;  // loop steps done (updates plus skipped steps)
  int64_t epoch = 0, cursor = 0;
  int64_t skipped = 0, bad_in_row = 0;  // steps skipped for a non-finite loss / gradient norm
};

constexpr int64_t kCheckpointFormat = 1;

// The name of the first tensor holding a NaN or an infinity, "" if all are finite.
std::string first_non_finite(const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors)
    if (anomaly::first_non_finite(t) >= 0) return name;
  return "";
}

void save_checkpoint(const std::string& path, const Config& cfg, const models::PairBiasModel& model,
                     const optim::AdamW& opt, const TrainState& st) {
  H5Writer w(path);
  write_tensors(w, "model", model.named_parameters());
  write_model_attrs(w, cfg.model);
  write_tensors(w, "optim", opt.state());
  w.write_attr("/optim", "steps_taken", opt.steps_taken());
  w.write_attr("/", "step", st.step);
  w.write_attr("/", "sampler_epoch", st.epoch);
  w.write_attr("/", "sampler_cursor", st.cursor);
  w.write_attr("/", "skipped_steps", st.skipped);
  w.write_attr("/", "bad_steps_in_row", st.bad_in_row);
  w.write_attr("/", "config_hash", config_hash(cfg));
  w.write_attr("/", "format_version", kCheckpointFormat);
  w.commit();
}

// Loads the model weights (and, if opt is given, the optimizer and the loop state).
TrainState load_checkpoint(const std::string& path, const Config& cfg, models::PairBiasModel& model,
                           optim::AdamW* opt) {
  H5Reader r(path);
  const int64_t version = r.attr_int("/", "format_version");
  PF_CHECK(version == kCheckpointFormat, "checkpoint " << path << ": format_version " << version
                                                       << " is not supported (this build reads "
                                                       << kCheckpointFormat << ")");
  check_model_attrs(r, cfg.model);
  read_tensors(r, "model", model.named_parameters());
  const std::string bad = first_non_finite(model.named_parameters());
  PF_CHECK(bad.empty(), "checkpoint " << path << ": model/" << bad << " holds a NaN or an infinity");
  TrainState st;
  st.step = r.attr_int("/", "step");
  PF_CHECK(st.step >= 0, "checkpoint " << path << ": expected step >= 0, found " << st.step);
  if (opt) {
    const uint64_t h = r.attr_uint64("/", "config_hash");
    PF_CHECK(h == config_hash(cfg), "checkpoint " << path
                                                  << " was written with different model/data settings; "
                                                     "--resume needs the same config (or a new --out)");
    read_tensors(r, "optim", opt->state());  // into the moments in place
    for (const auto& [name, t] : opt->state()) {
      std::string what;
      const int64_t at = anomaly::first_non_finite(t, &what);
      PF_CHECK(at < 0, "checkpoint " << path << ": optim/" << name << " holds " << what << " at flat index " << at);
      if (name.rfind("v.", 0) == 0)  // second moments are squares
        for (double x : t.to_vector<double>())
          PF_CHECK(x >= 0, "checkpoint " << path << ": optim/" << name << " holds a negative value " << x);
    }
    const int64_t taken = r.attr_int("/optim", "steps_taken");
    PF_CHECK(taken >= 0 && taken <= st.step, "checkpoint " << path << ": expected 0 <= optim steps_taken <= step = "
                                                           << st.step << ", found " << taken);
    opt->set_steps_taken(taken);
    st.epoch = r.attr_int("/", "sampler_epoch");
    st.cursor = r.attr_int("/", "sampler_cursor");
    PF_CHECK(st.epoch >= 0 && st.cursor >= 0, "checkpoint " << path << ": expected sampler_epoch and sampler_cursor >= 0, found "
                                                            << st.epoch << " and " << st.cursor);
    // Written since the non-finite step counting; absent in older checkpoints (then 0).
    if (r.has_attr("/", "skipped_steps")) st.skipped = r.attr_int("/", "skipped_steps");
    if (r.has_attr("/", "bad_steps_in_row")) st.bad_in_row = r.attr_int("/", "bad_steps_in_row");
    PF_CHECK(st.bad_in_row >= 0 && st.bad_in_row <= st.skipped && st.skipped + taken == st.step,
             "checkpoint " << path << ": expected 0 <= bad_steps_in_row <= skipped_steps and skipped_steps + optim "
                              "steps_taken = step, found " << st.bad_in_row << ", " << st.skipped << ", "
                           << taken << ", " << st.step);
  }
  return st;
}

void write_plots(const std::string& dir, const MetricsLog& log, const models::PairBiasModel& model) {
  auto series = [&](const std::string& key, const std::string& label) {
    plot::Series s{label, {}, {}};
    for (auto [x, y] : log.series(key)) s.x.push_back(x), s.y.push_back(y);
    return s;
  };
  plot::write_svg(dir + "/curves.svg", "training curves",
                  {{"loss", "step", "cross-entropy", {series("loss", "train"), series("val_loss", "validation")}},
                   {"accuracy", "step", "accuracy", {series("acc", "train"), series("val_acc", "validation")}}});
  const ModelConfig& c = model.config();
  if (model.relpos_bias()) {  // the tables themselves: bias against offset, per head and layer
    std::vector<plot::Panel> panels;
    for (int l = 0; l < c.n_layers; ++l) {
      const auto table = models::relpos_table(model, l).to_vector<double>();  // (H, 2R+1)
      plot::Panel p{"layer " + std::to_string(l), "relative position j − i", "bias", {}};
      for (int h = 0; h < c.n_heads; ++h) {
        plot::Series sr{"head " + std::to_string(h), {}, {}};
        for (int o = -c.relpos_clip; o <= c.relpos_clip; ++o) {
          sr.x.push_back(o);
          sr.y.push_back(table[static_cast<size_t>(h) * (2 * c.relpos_clip + 1) + o + c.relpos_clip]);
        }
        p.series.push_back(sr);
      }
      panels.push_back(p);
    }
    plot::write_svg(dir + "/relpos_table.svg",
                    "learned relative-position tables (offsets beyond ±R share the end values)", panels);
    return;
  }
  std::vector<plot::Panel> by_dist, by_rel;
  for (int l = 0; l < c.n_layers; ++l) {
    const auto bd = models::bias_vs_distance(model, l).to_vector<double>();
    const auto br = models::bias_vs_relpos(model, l).to_vector<double>();
    plot::Panel pd{"layer " + std::to_string(l), "distance (Å, bin start)", "bias", {}};
    plot::Panel pr{"layer " + std::to_string(l), "relative position j − i", "bias", {}};
    for (int h = 0; h < c.n_heads; ++h) {
      plot::Series sd{"head " + std::to_string(h), {}, {}}, sr = sd;
      for (int k = 0; k < c.dist_bins; ++k) {
        sd.x.push_back(k * c.dist_max / c.dist_bins);
        sd.y.push_back(bd[k * c.n_heads + h]);
      }
      for (int o = -c.relpos_clip; o <= c.relpos_clip; ++o) {
        sr.x.push_back(o);
        sr.y.push_back(br[(o + c.relpos_clip) * c.n_heads + h]);
      }
      pd.series.push_back(sd);
      pr.series.push_back(sr);
    }
    by_dist.push_back(pd);
    by_rel.push_back(pr);
  }
  plot::write_svg(dir + "/bias_vs_distance.svg",
                  "learned attention bias against distance (at relative offset +R)", by_dist);
  plot::write_svg(dir + "/bias_vs_relpos.svg",
                  "learned attention bias against relative position (at distance 3.8·√|j−i| Å)", by_rel);
}

}  // namespace

// ---- train -----------------------------------------------------------------------------------

namespace {
int train_run(const Config& cfg, bool resume, int64_t stop_at, dist::Communicator* comm);
}

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

namespace {

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
    model.zero_grad();
    const auto r = host_batch_loss(model, batch, packed, device);
    if (grad_sync) {
      grad_sync->backward(r.loss);  // the mean of the ranks' gradients = the global batch's
    } else {
      r.loss.backward();
    }
    const double grad_norm = optim::clip_grad_norm(model.parameters(), t.grad_clip);
    double loss = r.loss.item(), acc = r.accuracy;
    if (comm) {  // every rank has the same number of residues: the global means are the means
      std::vector<double> m{loss, acc};
      comm->all_reduce_sum(m);
      loss = m[0] / world;
      acc = m[1] / world;
    }
    // A non-finite loss or gradient norm: no update (weights and moments stay as they were),
    // counted; the batch and the learning-rate schedule move on as after an update.
    const bool good = std::isfinite(loss) && std::isfinite(grad_norm);
    if (good) {
      opt.step(lr);
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

int train_data_parallel(const Config& cfg, bool resume, int gpus) {
  PF_CHECK(cfg.device != "cpu", "--gpus " << gpus << " trains on GPUs, but device is cpu");
  prepare_data(cfg);  // once, before the workers start (they only read the files)
  return run_data_parallel(gpus, [&](dist::Communicator& comm) { return train(cfg, resume, -1, &comm); });
}

// ---- eval ------------------------------------------------------------------------------------

int evaluate(const Config& cfg, const std::string& checkpoint_path) {
  const Device device = resolve_device(cfg.device);
  const anomaly::EnableGuard anomaly_mode(cfg.train.detect_anomaly);
  ChainSet train_set, val_set;
  load_data(cfg, train_set, val_set);
  models::PairBiasModel model(cfg.model, cfg.train.seed);
  model.to(precision_dtype(cfg.train.precision, device));
  model.to(device);
  const AutocastGuard autocast(cfg.train.precision == "bf16" ? DType::BF16 : DType::F32);
  const TrainState st = load_checkpoint(checkpoint_path, cfg, model, nullptr);
  const EvalResult e = evaluate_set(model, val_set, cfg.train.batch_size, device, nullptr, cfg.train.batch_tokens);
  std::printf("%s\n", JsonLine().add("mode", "eval").add("val_loss", e.loss).add("val_acc", e.accuracy)
                          .add("step", st.step).add("checkpoint", checkpoint_path).str().c_str());
  return 0;
}

// ---- gradcheck -------------------------------------------------------------------------------

int gradcheck(const Config& cfg) {
  // A tiny batch: 2 chains, at most 10 residues (long enough for non-local neighbours); a packed
  // run checks the packed model on 2 chains of lengths drawn from 6..10.
  const bool packed = packed_batches(cfg);
  const int N = std::min(cfg.data.n_res, 10);
  const ChainSet set = generate_chains(
      ChainSpec{2, packed ? 6 : N, packed ? 10 : N, cfg.model.n_types, cfg.data.seed, "gradcheck", cfg.data.task});
  models::PairBiasModel model(cfg.model, cfg.train.seed);
  model.to(DType::F64);
  const auto params = model.named_parameters();
  int64_t n_params = 0;
  for (const auto& [name, p] : params) n_params += p.numel();
  // Every element of every parameter for models up to 20k parameters; beyond that a seeded
  // random subset of 256 elements per parameter keeps the check to seconds.
  GradcheckOptions opt;
  opt.max_elements = n_params <= 20000 ? 0 : 256;
  opt.eps = 1e-5;
  int64_t tokens = 0;
  const auto loss = [&] { return batch_loss(model, set, {0, 1}, packed, Device::CPU, &tokens).loss; };
  const auto entries = pf::gradcheck(loss, params, opt);
  const double tol = 1e-6;  // float64 central differences, eps 1e-5: truncation ~1e-10,
                            // rounding ~1e-11 per element; small gradients show ~1e-7
  double worst = 0;
  std::string worst_name;
  std::printf("%-36s %10s %12s\n", "parameter", "checked", "rel. error");
  for (const auto& e : entries) {
    std::printf("%-36s %10lld %12.3e%s\n", e.name.c_str(), static_cast<long long>(e.checked),
                e.rel_error, e.rel_error > tol ? "  FAIL" : "");
    if (e.rel_error > worst || worst_name.empty()) worst = e.rel_error, worst_name = e.name;
  }
  const bool passed = worst <= tol;
  std::printf("%s\n", JsonLine().add("mode", "gradcheck").add("passed", passed)
                          .add("worst_rel_error", worst).add("worst_param", worst_name)
                          .add("params", static_cast<int64_t>(entries.size())).add("tolerance", tol)
                          .str().c_str());
  return passed ? 0 : 1;
}

}  // namespace pf::run
