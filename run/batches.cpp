#include "run/batches.h"

#include <cstdio>
#include <string>

namespace pf::run {

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

void load_data(const Config& cfg, ChainSet& train_set, ChainSet& val_set) {
  prepare_data(cfg);
  train_set = read_chains(cfg.data.train);
  val_set = read_chains(cfg.data.val);
}

BatchTensors to_tensors(const Batch& batch, const ModelConfig& cfg, Device device) {
  BatchTensors t;
  t.tokens = Tensor::from_vector(batch.tokens, {batch.B, batch.N}, DType::I32, device);
  t.labels = Tensor::from_vector(batch.labels, {batch.B, batch.N}, DType::I32, device);
  // A relpos model reads no pair features: its bias is the table inside each layer.
  if (cfg.attn_bias == "pair")
    t.pair = models::pair_features(batch.coords.data(), batch.B, batch.N, cfg, device);
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

HostBatch gather_host(const ChainSet& set, std::vector<int> idx, bool packed, int world, int rank) {
  HostBatch h;
  h.global_idx = std::move(idx);
  std::vector<int> mine = h.global_idx;
  if (world > 1) {  // this rank's contiguous slice of the global batch
    const size_t per = mine.size() / world;
    mine = std::vector<int>(mine.begin() + rank * per, mine.begin() + (rank + 1) * per);
  }
  if (packed)
    h.packed = gather_packed(set, mine);
  else
    h.dense = gather_batch(set, mine);
  return h;
}

models::LossResult host_batch_loss(const models::PairBiasModel& model, const HostBatch& h, bool packed,
                                   Device device) {
  if (packed) {
    const PackedTensors b = to_tensors(h.packed, model.config(), device);
    return models::model_loss(model, b.tokens, b.packing, b.labels);
  }
  const BatchTensors b = to_tensors(h.dense, model.config(), device);
  return models::model_loss(model, b.tokens, b.pair, b.labels);
}

models::LossResult batch_loss(const models::PairBiasModel& model, const ChainSet& set,
                              const std::vector<int>& idx, bool packed, Device device, int64_t* tokens) {
  const HostBatch h = gather_host(set, idx, packed, 1, 0);
  *tokens = packed ? h.packed.T() : int64_t{h.dense.B} * h.dense.N;
  return host_batch_loss(model, h, packed, device);
}

}  // namespace pf::run
