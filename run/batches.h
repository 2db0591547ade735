// From the data set to the model's inputs: the data files of a config, batches gathered on the
// host, and batches as tensors on a device, with the loss of one batch.
#pragma once
#include <cstdint>
#include <vector>

#include "data/chain.h"
#include "framework/config.h"
#include "framework/tensor.h"
#include "models/pairbias.h"

namespace pf::run {

// Makes sure the data files of cfg exist (generating them if missing, and saying so).
void prepare_data(const Config& cfg);

// prepare_data, then reads the training and validation splits.
void load_data(const Config& cfg, ChainSet& train_set, ChainSet& val_set);

// A batch as tensors on `device`: tokens/labels (B,N) I32 and the pair features.
struct BatchTensors {
  Tensor tokens, labels;
  models::PairFeatures pair;
};
BatchTensors to_tensors(const Batch& batch, const ModelConfig& cfg, Device device);

// A packed batch as tensors on `device`: tokens/labels (T) I32, the lengths and the per-chain
// pair features (none for attn_bias: relpos).
struct PackedTensors {
  Tensor tokens, labels;
  models::Packing packing;
};
PackedTensors to_tensors(const PackedBatch& batch, const ModelConfig& cfg, Device device);

// Whether a run trains on packed batches: chains of different lengths (data.n_res_min <
// n_res_max) or batches by tokens (train.batch_tokens > 0).
bool packed_batches(const Config& cfg);

// A batch prepared on the host: its global sample indices, this rank's rows of them gathered
// (dense or packed), and the sampler's state right after the indices were drawn (what a
// checkpoint taken after this batch's step records).
struct HostBatch {
  std::vector<int> global_idx;
  Batch dense;
  PackedBatch packed;
  int64_t epoch = 0, cursor = 0;
};

// Gathers the samples idx of set; with world > 1, only rank's contiguous slice of them.
HostBatch gather_host(const ChainSet& set, std::vector<int> idx, bool packed, int world, int rank);

// The loss of a host batch, uploaded to `device`.
models::LossResult host_batch_loss(const models::PairBiasModel& model, const HostBatch& h, bool packed,
                                   Device device);

// The loss of the samples idx of set, dense or packed; *tokens = the residues it covers.
models::LossResult batch_loss(const models::PairBiasModel& model, const ChainSet& set,
                              const std::vector<int>& idx, bool packed, Device device, int64_t* tokens);

}  // namespace pf::run
