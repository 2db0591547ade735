// The modes of the train program (docs/DESIGN.md §5), one job per file. Each mode ends by printing one
// JSON line on stdout and returns the process exit code. They sit above models/ and data/ and tie
// them together:
//   run/train_loop.h   training: the loop around train_step(), and data-parallel training
//   run/evaluate.h     evaluation of a model over a data set, and `--eval`
//   run/gradcheck.h    `--gradcheck`: every parameter's gradient against finite differences
//   run/checkpoint.h   the checkpoint format and its validation
//   run/plots.h        the SVG plots of a run directory
//   run/batches.h      data files, batches on the host, batches as tensors, the loss of a batch
//   run/environment.h  device selection and `--check-env`
//   run/launch.h       one process per GPU for data-parallel training
#pragma once

#include "run/batches.h"
#include "run/environment.h"
#include "run/evaluate.h"
#include "run/gradcheck.h"
#include "run/train_loop.h"
