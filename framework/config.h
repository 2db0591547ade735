// The run configuration (docs/DESIGN.md §4, §5): a YAML file with sections model:, data:, train: and the
// top-level keys device: and out:, then `key=value` overrides with dotted keys.
//
//   Config cfg = load_config("configs/pairbias.yaml", {"train.steps=200", "device=cpu"});
//
// Conventions (stated once, here):
// - Every key is optional (the defaults below); an unknown key, a value of the wrong type or an
//   impossible value is a pf::Error of one line that names the key ("config: 'model.d_model'
//   must be an integer, found 'abc'"). Nothing is silently defaulted or clamped.
// - After loading, model.d_ff = 0 is resolved to 4·d_model and data.n_res_min / n_res_max = 0 to
//   data.n_res, so a loaded Config is complete.
// - Relative data paths stay as written (train resolves them against the working directory).
// - Override values are taken as typed, not parsed as YAML: a string key gets every byte after
//   the '=' ("out=runs/exp #3" is that directory, quotes and all), a typed key parses the whole
//   text strictly (no quotes, spaces or comments); then they are checked like values from the file.
// - config_to_yaml writes a string that is not UTF-8 (a path may be any bytes) as
//   `!!binary "<base64>"`; the loader reads !!binary back to the exact bytes.
// - Values echoed in error lines are cut to a readable length (pf::echo); every size derived
//   from the keys is computed in 64 bits and checked against what the kernels index and what
//   this machine's memory holds (lower bounds only, so no config that fits is refused).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pf {

struct ModelConfig {
  int n_types = 8, d_model = 64, n_heads = 4, n_layers = 2;
  int d_ff = 0;  // 0 -> 4·d_model after load
  int c_z = 16, relpos_clip = 32, dist_bins = 64;
  double dist_max = 16.0;  // Å
  // The attention bias of every layer: "pair" = LN_z(z)·W_b from the pair representation
  // (docs/DESIGN.md §4); "relpos" = only a learned relative-position table (H, 2R+1) per layer, looked up
  // inside the attention kernel (no pair representation, no distances; c_z, dist_bins and
  // dist_max are then unused).
  std::string attn_bias = "pair";
};

struct DataConfig {
  std::string train = "data/chain_train.h5", val = "data/chain_val.h5";
  int n_train = 8192, n_val = 512, n_res = 64;
  // Chains of lengths uniform in [n_res_min, n_res_max] instead of all n_res. 0 (the default)
  // means n_res; resolved after load, so a loaded Config has both set (n_res_min = n_res_max =
  // n_res: every chain has n_res residues, as before these keys existed).
  int n_res_min = 0, n_res_max = 0;
  uint64_t seed = 1234;
  // What the labels are (data/chain.h): "chain" = the type of the nearest non-local neighbour
  // in space (docs/DESIGN.md §3); "relpos" = (t_{i−1} + t_{i+2}) mod K, a rule of relative position only.
  std::string task = "chain";
};

struct TrainConfig {
  int steps = 600, batch_size = 32;
  // 0: batches of batch_size chains. > 0: packed batches of as many chains as fit in batch_tokens
  // residues (no padding; batch_size is then unused), at least n_res_max. Chains of different
  // lengths are always trained packed (by batch_size chains when batch_tokens is 0).
  int batch_tokens = 0;
  double lr = 3e-3, min_lr = 3e-4;
  int warmup = 50;
  double weight_decay = 0.01, grad_clip = 1.0;  // grad_clip 0 = no clipping
  uint64_t seed = 0;
  int eval_every = 100, log_every = 20, checkpoint_every = 200;
  std::string precision = "fp32";  // fp32 | bf16 | fp64
  // A step whose loss or gradient norm is not finite is skipped (no update) and counted; this
  // many in a row stop the run (the last good checkpoint is kept).
  int max_bad_steps = 10;
  // Anomaly mode: every op's output and every gradient is checked, and the first non-finite
  // one stops the run with the op, its shape and the layer it belongs to (framework/anomaly.h).
  bool detect_anomaly = false;
  // Deterministic mode on the GPU: bitwise-identical runs for the same seed and config
  // (framework/deterministic.h; the CPU always is). Not part of config_hash.
  bool deterministic = false;
  // The training step captured once in a CUDA graph and replayed (run/train_step.h): auto = where
  // the step can be captured (one GPU, dense batches, no anomaly mode), on = that or an error
  // naming why not, off = every step eager. Not part of config_hash.
  std::string cuda_graph = "auto";
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  std::string device = "auto";  // auto | cpu | cuda
  std::string out = "runs/pairbias";
};

// Reads `path`, applies `overrides` ("train.steps=200", "device=cpu") after the file, resolves
// d_ff, n_res_min and n_res_max and validates everything.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config config_from_yaml_string(const std::string& yaml, const std::vector<std::string>& overrides = {});

// Checks a Config built or edited in code (what load_config runs last); d_ff must be resolved
// or 0, and so may n_res_min / n_res_max. Fails with the same one-line messages.
void validate_config(const Config& cfg);

// The resolved config with every key, in a fixed order; load_config reads it back to an equal
// Config (doubles are written with the shortest text that round-trips).
std::string config_to_yaml(const Config& cfg);

// Stable (FNV-1a 64 over a canonical text) hash of what the model and the data are: every
// model key (d_ff resolved) and every data key but the file paths (moving the files does not
// change the data). Train keys, device and out are not part of it: a resumed run may change
// them. Keys added after checkpoints existed (model.attn_bias, data.task, data.n_res_min,
// data.n_res_max) enter the text only when they differ from their defaults (n_res for the
// lengths), so the hash of an older config, and with it --resume from its checkpoints, is
// unchanged.
uint64_t config_hash(const Config& cfg);

}  // namespace pf
