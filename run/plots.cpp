#include "run/plots.h"

#include "framework/plot.h"

namespace pf::run {

void write_plots(const std::string& dir, const MetricsLog& log, const models::PairBiasModel& model) {
  auto series = [&](const std::string& key, const std::string& label) {
    plot::Series s{label, {}, {}};
    for (auto [x, y] : log.series(key)) s.x.push_back(x), s.y.push_back(y);
    return s;
  };
  plot::write_svg(
      dir + "/curves.svg", "training curves",
      {{"loss", "step", "cross-entropy", {series("loss", "train"), series("val_loss", "validation")}},
       {"accuracy", "step", "accuracy", {series("acc", "train"), series("val_acc", "validation")}}});
  const ModelConfig& c = model.config();
  if (model.relpos_bias()) {  // the tables themselves: bias against offset, per head and layer
    std::vector<plot::Panel> panels;
    for (int l = 0; l < c.n_layers; ++l) {
      const auto table = models::relpos_table(model, l).to_vector<double>();  // (H, 2R+1)
      plot::Panel p{"layer " + std::to_string(l), "relative position j − i", "bias", {}};
      for (int h = 0; h < c.n_heads; ++h) {
        plot::Series sr{"head " + std::to_string(h), {}, {}};
        for (int o = -c.relpos_clip; o <= c.relpos_clip; ++o) {
          sr.x.push_back(o);
          sr.y.push_back(table[static_cast<size_t>(h) * (2 * c.relpos_clip + 1) + o + c.relpos_clip]);
        }
        p.series.push_back(sr);
      }
      panels.push_back(p);
    }
    plot::write_svg(dir + "/relpos_table.svg",
                    "learned relative-position tables (offsets beyond ±R share the end values)", panels);
    return;
  }
  std::vector<plot::Panel> by_dist, by_rel;
  for (int l = 0; l < c.n_layers; ++l) {
    const auto bd = models::bias_vs_distance(model, l).to_vector<double>();
    const auto br = models::bias_vs_relpos(model, l).to_vector<double>();
    plot::Panel pd{"layer " + std::to_string(l), "distance (Å, bin start)", "bias", {}};
    plot::Panel pr{"layer " + std::to_string(l), "relative position j − i", "bias", {}};
    for (int h = 0; h < c.n_heads; ++h) {
      plot::Series sd{"head " + std::to_string(h), {}, {}}, sr = sd;
      for (int k = 0; k < c.dist_bins; ++k) {
        sd.x.push_back(k * c.dist_max / c.dist_bins);
        sd.y.push_back(bd[k * c.n_heads + h]);
      }
      for (int o = -c.relpos_clip; o <= c.relpos_clip; ++o) {
        sr.x.push_back(o);
        sr.y.push_back(br[(o + c.relpos_clip) * c.n_heads + h]);
      }
      pd.series.push_back(sd);
      pr.series.push_back(sr);
    }
    by_dist.push_back(pd);
    by_rel.push_back(pr);
  }
  plot::write_svg(dir + "/bias_vs_distance.svg",
                  "learned attention bias against distance (at relative offset +R)", by_dist);
  plot::write_svg(dir + "/bias_vs_relpos.svg",
                  "learned attention bias against relative position (at distance 3.8·√|j−i| Å)", by_rel);
}

}  // namespace pf::run
