#include "run/checkpoint.h"

#include "framework/anomaly.h"

namespace pf::run {

void write_tensors(H5Writer& w, const std::string& group, const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) {
    const std::string path = group + "/" + name;
    if (t.dtype() == DType::F64) {
      const auto host = t.to_vector<double>();
      w.write_dataset(path, host.data(), t.shape());
    } else {  // F32 master weights; bf16/fp16 tensors are widened
      const auto host = t.to_vector<float>();
      w.write_dataset(path, host.data(), t.shape());
    }
  }
}

void read_tensors(const H5Reader& r, const std::string& group, const nn::NamedTensors& tensors) {
  for (const auto& [name, t] : tensors) {
    const std::string path = group + "/" + name;
    PF_CHECK(r.has(path), "file " << r.path() << ": missing dataset '" << path << "'");
    const auto values = r.read_double(path, t.shape());
    Tensor dst = t;
    dst.copy_(Tensor::from_vector(values, t.shape(), t.dtype()).to(t.device()));
  }
}

namespace {

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
      {"n_types", m.n_types},         {"d_model", m.d_model},    {"n_heads", m.n_heads},
      {"n_layers", m.n_layers},       {"d_ff", m.d_ff},          {"c_z", m.c_z},
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

constexpr int64_t kCheckpointFormat = 1;

}  // namespace

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
      PF_CHECK(at < 0,
               "checkpoint " << path << ": optim/" << name << " holds " << what << " at flat index " << at);
      if (name.rfind("v.", 0) == 0)  // second moments are squares
        for (double x : t.to_vector<double>())
          PF_CHECK(x >= 0, "checkpoint " << path << ": optim/" << name << " holds a negative value " << x);
    }
    const int64_t taken = r.attr_int("/optim", "steps_taken");
    PF_CHECK(taken >= 0 && taken <= st.step,
             "checkpoint " << path << ": expected 0 <= optim steps_taken <= step = " << st.step << ", found "
                           << taken);
    opt->set_steps_taken(taken);
    st.epoch = r.attr_int("/", "sampler_epoch");
    st.cursor = r.attr_int("/", "sampler_cursor");
    PF_CHECK(st.epoch >= 0 && st.cursor >= 0,
             "checkpoint " << path << ": expected sampler_epoch and sampler_cursor >= 0, found " << st.epoch
                           << " and " << st.cursor);
    // Written since the non-finite step counting; absent in older checkpoints (then 0).
    if (r.has_attr("/", "skipped_steps")) st.skipped = r.attr_int("/", "skipped_steps");
    if (r.has_attr("/", "bad_steps_in_row")) st.bad_in_row = r.attr_int("/", "bad_steps_in_row");
    PF_CHECK(st.bad_in_row >= 0 && st.bad_in_row <= st.skipped && st.skipped + taken == st.step,
             "checkpoint " << path
                           << ": expected 0 <= bad_steps_in_row <= skipped_steps and skipped_steps + optim "
                              "steps_taken = step, found "
                           << st.bad_in_row << ", " << st.skipped << ", " << taken << ", " << st.step);
  }
  return st;
}

}  // namespace pf::run
