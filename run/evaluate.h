// Evaluation: the loss and accuracy of a model over a data set, and `train --eval`.
#pragma once
#include <cstdint>
#include <string>

#include "data/chain.h"
#include "framework/config.h"
#include "framework/tensor.h"
#include "models/pairbias.h"

namespace pf::dist {
class Communicator;
}

namespace pf::run {

struct EvalResult {
  double loss = 0, accuracy = 0;
};
// Mean loss and accuracy over every residue of `set`, in batches of batch_size (no grad).
// With comm, each rank evaluates its contiguous share of the samples and the sums are reduced.
// A set of chains of different lengths is evaluated in packed batches, of batch_size chains or,
// with batch_tokens > 0, of consecutive chains up to that many residues.
EvalResult evaluate_set(const models::PairBiasModel& model, const ChainSet& set, int batch_size,
                        Device device, dist::Communicator* comm = nullptr, int64_t batch_tokens = 0);

// Loads a checkpoint and evaluates it on the validation split.
int evaluate(const Config& cfg, const std::string& checkpoint);

}  // namespace pf::run
