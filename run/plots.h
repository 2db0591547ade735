// The SVG plots of a run directory, redrawn at every checkpoint: the training curves and what the
// model learned of its attention bias (framework/plot.h draws them).
#pragma once
#include <string>

#include "framework/run_dir.h"
#include "models/pairbias.h"

namespace pf::run {

// curves.svg (loss and accuracy, train and validation, from the metrics log) and, for a pair
// model, bias_vs_distance.svg and bias_vs_relpos.svg; for a relpos model, relpos_table.svg.
void write_plots(const std::string& dir, const MetricsLog& log, const models::PairBiasModel& model);

}  // namespace pf::run
