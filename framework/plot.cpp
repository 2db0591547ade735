#include "framework/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "kernels/check.h"

namespace pf::plot {

namespace {

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                         "#9467bd", "#8c564b", "#e377c2", "#17becf"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out += c;
  }
  return out;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

void draw_panel(std::ostream& os, const Panel& p, double x0, double y0, double w, double h) {
  const double left = 60, right = 110, top = 28, bottom = 40;
  const double pw = w - left - right, ph = h - top - bottom;
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const Series& s : p.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]);
      xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]);
      ymax = std::max(ymax, s.y[i]);
    }
  if (!(xmin <= xmax)) xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + 1;
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  auto X = [&](double x) { return x0 + left + (x - xmin) / (xmax - xmin) * pw; };
  auto Y = [&](double y) { return y0 + top + (1 - (y - ymin) / (ymax - ymin)) * ph; };

  os << "<text x='" << x0 + left + pw / 2 << "' y='" << y0 + 18 << "' text-anchor='middle' font-size='13'>"
     << escape(p.title) << "</text>\n";
  os << "<rect x='" << x0 + left << "' y='" << y0 + top << "' width='" << pw << "' height='" << ph
     << "' fill='none' stroke='#444'/>\n";
  for (int t = 0; t <= 4; ++t) {  // ticks
    const double xv = xmin + (xmax - xmin) * t / 4, yv = ymin + (ymax - ymin) * t / 4;
    os << "<text x='" << X(xv) << "' y='" << y0 + top + ph + 14 << "' text-anchor='middle' font-size='10'>"
       << fmt(xv) << "</text>\n";
    os << "<text x='" << x0 + left - 4 << "' y='" << Y(yv) + 3 << "' text-anchor='end' font-size='10'>"
       << fmt(yv) << "</text>\n";
    os << "<line x1='" << x0 + left << "' x2='" << x0 + left + pw << "' y1='" << Y(yv) << "' y2='" << Y(yv)
       << "' stroke='#eee'/>\n";
  }
  os << "<text x='" << x0 + left + pw / 2 << "' y='" << y0 + h - 6 << "' text-anchor='middle' font-size='11'>"
     << escape(p.xlabel) << "</text>\n";
  os << "<text transform='translate(" << x0 + 14 << "," << y0 + top + ph / 2
     << ") rotate(-90)' text-anchor='middle' font-size='11'>" << escape(p.ylabel) << "</text>\n";
  for (size_t k = 0; k < p.series.size(); ++k) {
    const Series& s = p.series[k];
    const char* color = kColors[k % 8];
    os << "<polyline fill='none' stroke-width='1.5' stroke='" << color << "' points='";
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i])) os << X(s.x[i]) << "," << Y(s.y[i]) << " ";
    os << "'/>\n";
    const double ly = y0 + top + 14 + 16 * k;
    os << "<line x1='" << x0 + left + pw + 8 << "' x2='" << x0 + left + pw + 24 << "' y1='" << ly - 4
       << "' y2='" << ly - 4 << "' stroke='" << color << "' stroke-width='2'/>\n";
    os << "<text x='" << x0 + left + pw + 28 << "' y='" << ly << "' font-size='10'>" << escape(s.label)
       << "</text>\n";
  }
}

}  // namespace

void write_svg(const std::string& path, const std::string& title, const std::vector<Panel>& panels,
               int columns) {
  const double w = 460, h = 300, head = 30;
  const int cols = std::max(1, std::min<int>(columns, static_cast<int>(panels.size())));
  const int rows = (static_cast<int>(panels.size()) + cols - 1) / cols;
  std::ostringstream os;
  os << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w * cols << "' height='" << head + h * rows
     << "' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n";
  os << "<text x='10' y='20' font-size='15' font-weight='bold'>" << escape(title) << "</text>\n";
  for (size_t i = 0; i < panels.size(); ++i)
    draw_panel(os, panels[i], w * (i % cols), head + h * (i / cols), w, h);
  os << "</svg>\n";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    PF_CHECK(f.good(), "cannot write plot " << tmp);
    f << os.str();
    PF_CHECK(f.good(), "failed writing plot " << tmp);
  }
  PF_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename " << tmp << " to " << path);
}

}  // namespace pf::plot
