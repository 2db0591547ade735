#include "framework/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "framework/files.h"
#include "kernels/check.h"

namespace pf {

namespace fs = std::filesystem;

void prepare_run_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  PF_CHECK(!ec, "cannot create run directory '" << dir << "': " << ec.message());
  const std::string probe = temp_path_for((fs::path(dir) / ".write_probe").string());
  {
    std::ofstream f(probe);
    f << "probe\n";
    f.flush();
    PF_CHECK(f.good(), "run directory '" << dir << "' is not writable (or the disk is full)");
  }
  fs::remove(probe, ec);
}

const std::vector<std::string>& run_dir_files() {
  static const std::vector<std::string> files = {
      "checkpoint.h5",        "metrics.jsonl",      "config.yaml",     "curves.svg",
      "bias_vs_distance.svg", "bias_vs_relpos.svg", "relpos_table.svg"};
  return files;
}

RunDirLock::RunDirLock(const std::string& dir, RunStart start) {
  prepare_run_dir(dir);
  const std::string lock_path = (fs::path(dir) / ".lock").string();
  fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  PF_CHECK(fd_ >= 0, "cannot open the lock file " << lock_path << ": " << std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {};
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    ::close(fd_);
    fd_ = -1;
    PF_CHECK(err == EWOULDBLOCK, "cannot lock " << lock_path << ": " << std::strerror(err));
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    PF_FAIL("run directory '" << echo(dir) << "' is in use by another train process (pid "
                              << (pid.empty() ? "unknown" : pid)
                              << "); wait for it to end, or choose another --out");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 ||
      ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    PF_FAIL("cannot write the lock file " << lock_path << ": " << std::strerror(errno));
  // Ours alone now: temp files here were left by processes that were killed mid-write.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (is_temp_path(e.path().filename().string())) fs::remove(e.path(), ec);
  std::vector<std::string> found;
  for (const char* f : {"checkpoint.h5", "metrics.jsonl"})
    if (fs::exists(fs::path(dir) / f, ec)) found.push_back(f);
  if (start == RunStart::Fresh && !found.empty())
    PF_FAIL("run directory '" << echo(dir) << "' holds another run (" << found[0]
                              << (found.size() > 1 ? ", " + found[1] : "")
                              << "); use --resume to continue it, --overwrite to remove its files and start "
                                 "over, or choose another --out");
  if (start == RunStart::Overwrite)
    for (const std::string& f : run_dir_files()) {
      fs::remove(fs::path(dir) / f, ec);
      PF_CHECK(!ec, "--overwrite: cannot remove " << (fs::path(dir) / f).string() << ": " << ec.message());
    }
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock; the file stays (removing it would race)
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = temp_path_for(path);
  {
    std::ofstream f(tmp);
    f << text;
    f.flush();
    if (!f.good()) {
      f.close();
      std::remove(tmp.c_str());
      PF_FAIL("cannot write " << tmp << " (unwritable directory or full disk)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    PF_FAIL("cannot rename " << tmp << " to " << path << ": " << std::strerror(err));
  }
}

namespace {

// A JSON string (RFC 8259 §7): quotes, backslashes and control characters escaped, UTF-8 as it
// is. A byte that is not part of well-formed UTF-8 (a path may hold any byte) becomes \udcXX,
// the lone low surrogate of Python's "surrogateescape" (os.fsencode turns it back into the byte),
// so the line stays valid UTF-8 and nothing is lost.
std::string json_string(const std::string& v) {
  static const char hex[] = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < v.size(); ++i) {
    const char c = v[i];
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += {'\\', c};
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (u < 0x20) {
      out += {'\\', 'u', '0', '0', hex[u >> 4], hex[u & 15]};
    } else if (const size_t n = utf8_length(v, i)) {
      out.append(v, i, n);
      i += n - 1;
    } else {
      out += {'\\', 'u', 'd', 'c', hex[u >> 4], hex[u & 15]};
    }
  }
  return out + "\"";
}

}  // namespace

void JsonLine::key(const std::string& k) {
  if (!body_.empty()) body_ += ", ";
  body_ += json_string(k) + ": ";
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
  body_ += json_string(v);
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
      if (find_number(line, "step", step) && step <= static_cast<double>(resume_step)) kept += line + "\n";
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
    if (find_number(line, "step", step) && find_number(line, key, value)) out.emplace_back(step, value);
  return out;
}

}  // namespace pf
