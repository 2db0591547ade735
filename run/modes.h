// The modes of the train program (DESIGN §5). Each ends by printing one JSON line on stdout and
// returns the process exit code. They sit above models/ and data/ and tie them together.
#pragma once
#include <string>

#include "data/chain.h"
#include "framework/config.h"
#include "framework/tensor.h"
#include "models/pairbias.h"

namespace pf::dist {
class Communicator;
}

namespace pf::run {

// "auto" → cuda when a GPU and the CUDA backend are present, else cpu; "cuda" without them is an
// error naming what is missing.
Device resolve_device(const std::string& requested);

// Prints what the build and the machine have: CPU threads, CUDA toolkit, driver, GPU.
int check_env();

// Trains per cfg into cfg.out; with resume, continues from cfg.out/checkpoint.h5. Batches are
// dense (B,N) for chains of one length and batches by count, else packed (packed_batches).
// stop_at > 0 ends the run early after that many updates, as an interrupted job would (with
// the checkpoint of that moment) — how tests check that a resumed run equals an unbroken one.
// With comm: this process is one rank of data-parallel training (framework/distributed.h): it
// takes its slice of each global batch of train.batch_size, gradients and metrics are averaged
// over the ranks, evaluation is sharded, and only rank 0 writes the run directory.
int train(const Config& cfg, bool resume, int64_t stop_at = -1, dist::Communicator* comm = nullptr);

// `train --gpus N`: makes sure the data files exist (here, once), then trains with one process
// per GPU (run/launch.h). N = 1 runs the same data-parallel code path on one GPU.
int train_data_parallel(const Config& cfg, bool resume, int gpus);

// Makes sure the data files of cfg exist (generating them if missing, and saying so).
void prepare_data(const Config& cfg);

// Loads a checkpoint and evaluates it on the validation split.
int evaluate(const Config& cfg, const std::string& checkpoint);

// Finite-difference check (float64, CPU) of every parameter's gradient on a tiny batch.
int gradcheck(const Config& cfg);

// ---- pieces the modes share (also used by tests) ----------------------------------------------

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

struct EvalResult {
  double loss = 0, accuracy = 0;
};
// Mean loss and accuracy over every residue of `set`, in batches of batch_size (no grad).
// With comm, each rank evaluates its contiguous share of the samples and the sums are reduced.
// A set of chains of different lengths is evaluated in packed batches, of batch_size chains or,
// with batch_tokens > 0, of consecutive chains up to that many residues.
EvalResult evaluate_set(const models::PairBiasModel& model, const ChainSet& set, int batch_size,
                        Device device, dist::Communicator* comm = nullptr, int64_t batch_tokens = 0);

}  // namespace pf::run
