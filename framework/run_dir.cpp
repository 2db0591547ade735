#include "framework/run_dir.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "kernels/check.h"

namespace pf {

namespace fs = std::filesystem;

void prepare_run_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  PF_CHECK(!ec, "cannot create run directory '" << dir << "': " << ec.message());
  const std::string probe = (fs::path(dir) / ".write_probe").string();
  {
    std::ofstream f(probe);
    f << "probe\n";
    f.flush();
    PF_CHECK(f.good(), "run directory '" << dir << "' is not writable (or the disk is full)");
  }
  fs::remove(probe, ec);
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << text;
    f.flush();
    PF_CHECK(f.good(), "cannot write " << tmp << " (unwritable directory or full disk)");
  }
  PF_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename " << tmp << " to " << path);
}

void JsonLine::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  body_ += "\"" + k + "\": ";
}

JsonLine& JsonLine::add(const std::string& k, double v) {
  key(k);
  if (!std::isfinite(v)) {
    body_ += "null";
  } else {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    body_ += buf;
  }
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, int64_t v) {
  key(k);
  body_ += std::to_string(v);
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, bool v) {
  key(k);
  body_ += v ? "true" : "false";
  return *this;
}

JsonLine& JsonLine::add(const std::string& k, const std::string& v) {
  key(k);
  body_ += "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') body_ += '\\';
    body_ += c;
  }
  body_ += "\"";
  return *this;
}

namespace {
// The numeric value of "key" in a flat JSON line, if present.
bool find_number(const std::string& line, const std::string& key, double& out) {
  const std::string pat = "\"" + key + "\": ";
  const size_t pos = line.find(pat);
  if (pos == std::string::npos) return false;
  const char* start = line.c_str() + pos + pat.size();
  char* end = nullptr;
  out = std::strtod(start, &end);
  return end != start;
}
}  // namespace

MetricsLog::MetricsLog(const std::string& path, bool resume, int64_t resume_step) : path_(path) {
  if (path.empty()) return;
  std::string kept;
  if (resume) {
    std::ifstream in(path);
    std::string line;
    double step = 0;
    while (std::getline(in, line))
      if (find_number(line, "step", step) && step <= static_cast<double>(resume_step))
        kept += line + "\n";
  }
  write_text_file(path, kept);
  out_.open(path, std::ios::app);
  PF_CHECK(out_.good(), "cannot append to " << path);
}

void MetricsLog::write(const JsonLine& line) {
  if (path_.empty()) return;
  out_ << line.str() << "\n";
  out_.flush();
  PF_CHECK(out_.good(), "failed writing " << path_ << " (full disk?)");
}

std::vector<std::pair<double, double>> MetricsLog::series(const std::string& key) const {
  std::vector<std::pair<double, double>> out;
  if (path_.empty()) return out;
  std::ifstream in(path_);
  std::string line;
  double step = 0, value = 0;
  while (std::getline(in, line))
    if (find_number(line, "step", step) && find_number(line, key, value))
      out.emplace_back(step, value);
  return out;
}

}  // namespace pf
