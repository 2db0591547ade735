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

// How a training run treats a directory that already holds a run's files.
enum class RunStart {
  Fresh,      // refuse a directory holding checkpoint.h5 or metrics.jsonl (one line naming the choices)
  Resume,     // continue what is there (--resume)
  Overwrite,  // remove the old run's files first, then start over (--overwrite)
};

// The files a run writes in its directory (all removed by RunStart::Overwrite; other files stay).
const std::vector<std::string>& run_dir_files();

// One owner per run directory: prepare_run_dir, then an advisory lock (flock on DIR/.lock,
// holding the owner's pid) for as long as this object lives; the OS releases it when the
// process ends, however it ends, and child processes (data-parallel workers) share it. A
// second run on the directory stops at once with one line naming the holder's pid. With the
// lock held: the temp files of killed runs are removed, then `start` is applied — nothing is
// removed or emptied before the lock is held and the directory found fit for this start.
class RunDirLock {
 public:
  RunDirLock(const std::string& dir, RunStart start);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

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
