// Training: the loop (train) around one optimisation step (train_step in run/train_loop.cpp),
// and data-parallel training over several GPUs.
#pragma once
#include <cstdint>

#include "framework/config.h"

namespace pf::dist {
class Communicator;
}

namespace pf::run {

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

}  // namespace pf::run
