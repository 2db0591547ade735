// The checkpoint format (docs/DESIGN.md §5): one HDF5 file, written atomically through H5Writer (temp
// file + rename), holding
//   /model/<name>   each parameter, with its shape ([out, in] for weights) and dtype; attributes
//                   of /model: the architecture (n_types, d_model, ..., attn_bias)
//   /optim/<name>   the AdamW moments (m.<param>, v.<param>); attribute steps_taken
//   /               attributes step, sampler_epoch, sampler_cursor, skipped_steps,
//                   bad_steps_in_row, config_hash, format_version
// and its validation on load: every value read is checked, and a mismatch is one line naming the
// file, the key, what was expected and what was found.
//
// It lives in run/ rather than framework/ because the format names the model's architecture, the
// config and the training loop's state, which sit above framework/.
#pragma once
#include <cstdint>
#include <string>

#include "framework/config.h"
#include "framework/h5io.h"
#include "framework/nn.h"
#include "framework/optim.h"
#include "models/pairbias.h"

namespace pf::run {

// Writes each tensor as dataset group/<name> (float32 or float64 as the tensor is).
void write_tensors(H5Writer& w, const std::string& group, const nn::NamedTensors& tensors);

// Reads group/<name> into each tensor in place (converted to its dtype and device). A missing
// dataset or a shape mismatch is an error naming the file, the dataset and both shapes.
void read_tensors(const H5Reader& r, const std::string& group, const nn::NamedTensors& tensors);

// Everything besides the weights and the optimizer that a resumed run needs to continue the exact
// same sequence. The training loop draws no random numbers besides the sampler's shuffles (no
// dropout), and each shuffle is a pure function of (train.seed, epoch): (epoch, cursor) is the
// whole random state.
struct TrainState {
  int64_t step = 0;  // loop steps done (updates plus skipped steps)
  int64_t epoch = 0, cursor = 0;
  int64_t skipped = 0, bad_in_row = 0;  // steps skipped for a non-finite loss / gradient norm
};

// The name of the first tensor holding a NaN or an infinity, "" if all are finite.
std::string first_non_finite(const nn::NamedTensors& tensors);

void save_checkpoint(const std::string& path, const Config& cfg, const models::PairBiasModel& model,
                     const optim::AdamW& opt, const TrainState& st);

// Loads the model weights (and, if opt is given, the optimizer and the loop state).
TrainState load_checkpoint(const std::string& path, const Config& cfg, models::PairBiasModel& model,
                           optim::AdamW* opt);

}  // namespace pf::run
