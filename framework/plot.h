// Minimal SVG line plots for the run directory: a grid of panels, each with several series.
// Self-contained files a browser shows; no plotting library needed.
#pragma once
#include <string>
#include <vector>

namespace pf::plot {

struct Series {
  std::string label;
  std::vector<double> x, y;
};

struct Panel {
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
};

// Writes panels in a grid of `columns` columns (atomically: temp file + rename).
void write_svg(const std::string& path, const std::string& title, const std::vector<Panel>& panels,
               int columns = 2);

}  // namespace pf::plot
