// The run directory (docs/DESIGN.md §5): created and checked for writability before any work, and the
// metrics log — one JSON object per line — that survives a resume without duplicated steps.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace pf {

// Creates `dir` (and parents) and proves it writable; a clear error otherwise.
void prepare_run_dir(const std::string& dir);

// Writes `text` to `path` atomically (temp file + rename).
void write_text_file(const std::string& path, const std::string& text);

// A flat JSON object built field by field: {"mode": "train", "val_loss": 0.12, ...}
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double v);
  JsonLine& add(const std::string& key, int64_t v);
  JsonLine& add(const std::string& key, int v) { return add(key, static_cast<int64_t>(v)); }
  JsonLine& add(const std::string& key, bool v);
  JsonLine& add(const std::string& key, const std::string& v);
  JsonLine& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

// metrics.jsonl: appends lines; on resume, first drops every line whose "step" is greater than
// the checkpoint's step, so the log of a resumed run equals an uninterrupted one.
class MetricsLog {
 public:
  // An empty path: a log that keeps nothing (the ranks > 0 of data-parallel training).
  MetricsLog(const std::string& path, bool resume, int64_t resume_step);
  void write(const JsonLine& line);
  // All (step, value) pairs of a numeric key logged so far, for the plots.
  std::vector<std::pair<double, double>> series(const std::string& key) const;

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace pf
