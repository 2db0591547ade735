// One process per GPU for data-parallel training (framework/distributed.h).
//
// run_data_parallel(N, worker) forks N workers from a process that has not touched CUDA (CUDA
// does not survive fork), gives worker r only the r-th GPU (CUDA_VISIBLE_DEVICES: the r-th entry
// of the caller's list, or r), hands all of them the NCCL id that worker 0 makes (through pipes),
// and waits. Worker 0 keeps stdout; the others' stdout is discarded (their stderr is kept, each
// line of an error prefixed with "rank r:"). NCCL_NVLS_ENABLE is set to 0 unless the caller set it.
// If a worker fails, the others are stopped (SIGTERM) and its exit status is returned.
#pragma once
#include <functional>

#include "framework/distributed.h"

namespace pf {

using DataParallelWorker = std::function<int(dist::Communicator& comm)>;

// gpus >= 1. Fails (pf::Error) before starting anything if fewer GPUs are visible.
int run_data_parallel(int gpus, const DataParallelWorker& worker);

// GPUs visible to a fresh process (counted in a child, so that this process stays CUDA-free).
int count_gpus_in_child();

}  // namespace pf
