// Runs that cannot clobber each other, through the real `train` program (processes, signals, two
// runs at once):
// - command-line values are taken literally: odd bytes in --out and data paths name exactly
//   those paths, typed values parse strictly, and the final JSON line stays valid JSON;
// - one owner per run directory: a second run on it stops naming the holder's pid, a fresh run
//   refuses a directory holding another run (nothing emptied), --overwrite starts over;
// - runs that generate the same data file at once all succeed and agree on one file;
// - SIGINT / SIGTERM: the step finishes, a checkpoint is written, exit 130 / 143, and --resume
//   ends bitwise where an unbroken run ends (checkpoints of identical runs are identical files);
//   a second signal ends the process at once;
// - a full disk (a tiny tmpfs) at a checkpoint write: one line, the last good checkpoint kept;
// - contradictory flags, derived sizes too large and overlong values: one line each.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "framework/config.h"
#include "framework/files.h"
#include "framework/h5io.h"
#include "framework/interrupt.h"
#include "tests/train_process.h"

namespace pf {
namespace {

namespace fs = std::filesystem;
using test::read_text;

std::string temp_dir(const std::string& name) { return test::temp_dir("rundir_" + name); }
using Clock = std::chrono::steady_clock;

// A tiny model; `steps` and the data size set how long a run takes (~5 ms a step here).
std::string config_text(const std::string& data_dir, int steps, int n_train = 48, int checkpoint_every = 3) {
  return "model: {n_types: 4, d_model: 16, n_heads: 2, n_layers: 1, c_z: 4, relpos_clip: 4, dist_bins: 8}\n"
         "data: {train: \"" +
         data_dir + "/train.h5\", val: \"" + data_dir + "/val.h5\", n_train: " + std::to_string(n_train) +
         ", n_val: 8, n_res: 10, seed: 5}\n"
         "train: {steps: " +
         std::to_string(steps) +
         ", batch_size: 4, warmup: 1, eval_every: 5, log_every: 1, "
         "checkpoint_every: " +
         std::to_string(checkpoint_every) + ", seed: 2}\ndevice: cpu\n";
}

std::string write_config(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string p = dir + "/" + name;
  std::ofstream(p) << text;
  return p;
}

struct Result {
  int status = -1;
  std::string out, err;
  bool exited(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
};

Result run_train(const std::string& dir, const std::vector<std::string>& args) {
  static int n = 0;
  const std::string o = dir + "/run" + std::to_string(++n) + ".out",
                    e = dir + "/run" + std::to_string(n) + ".err";
  Result r;
  r.status = test::wait_status(test::spawn_train(args, o, e));
  r.out = read_text(o);
  r.err = read_text(e);
  return r;
}

// A failed run: exit 1, stderr exactly one line "train: error: ..." holding every part.
void expect_one_error_line(const Result& r, const std::vector<std::string>& parts) {
  EXPECT_TRUE(r.exited(1)) << "status " << r.status << ", stderr: " << r.err;
  EXPECT_EQ(r.err.rfind("train: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  for (const std::string& p : parts)
    EXPECT_NE(r.err.find(p), std::string::npos) << "'" << p << "' not in: " << r.err;
}

// The value of the JSON string field `key` of a flat one-line object, decoded (\n, \t, \", \\,
// \uXXXX below 0x80 and \udcXX for a byte that is not UTF-8); fails the test on a raw control
// character, a byte that is not UTF-8, or a bad escape.
std::string json_field(const std::string& line, const std::string& key) {
  const std::string pat = "\"" + key + "\": \"";
  const size_t at = line.find(pat);
  if (at == std::string::npos) return "<no field " + key + ">";
  std::string v;
  for (size_t i = at + pat.size(); i < line.size(); ++i) {
    const char c = line[i];
    EXPECT_GE(static_cast<unsigned char>(c), 0x20) << "a raw control character in the JSON line";
    EXPECT_NE(static_cast<unsigned char>(c), 0xff) << "a byte that is not UTF-8 in the JSON line";
    if (c == '"') return v;
    if (c != '\\') {
      v += c;
      continue;
    }
    const char n = line[++i];
    if (n == 'n')
      v += '\n';
    else if (n == 't')
      v += '\t';
    else if (n == 'r')
      v += '\r';
    else if (n == '"' || n == '\\' || n == '/')
      v += n;
    else if (n == 'u') {  // below 0x80, or U+DC80..U+DCFF: a raw byte (surrogateescape)
      const int u = std::stoi(line.substr(i + 1, 4), nullptr, 16);
      EXPECT_TRUE(u < 0x80 || (u >= 0xdc80 && u <= 0xdcff)) << "unexpected \\u" << std::hex << u;
      v += static_cast<char>(u & 0xff);
      i += 4;
    } else
      ADD_FAILURE() << "bad escape \\" << n;
  }
  ADD_FAILURE() << "unterminated string";
  return v;
}

std::string last_line_starting(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  std::string line, found;
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) found = line;
  return found;
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (is_temp_path(e.path().string())) out.push_back(e.path().string());
  return out;
}

// Waits until `path` holds `text` (a run's progress line), at most 60 s.
bool wait_for_text(const std::string& path, const std::string& text) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(60)) {
    if (read_text(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

// Waits until `sig` is no longer pending for process `pid` (/proc/PID/status: SigPnd, ShdPnd),
// i.e. its handler has run; at most 10 s.
bool wait_until_delivered(pid_t pid, int sig) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(10)) {
    std::istringstream in(read_text("/proc/" + std::to_string(pid) + "/status"));
    bool pending = false;
    for (std::string line; std::getline(in, line);)
      if (line.rfind("SigPnd:", 0) == 0 || line.rfind("ShdPnd:", 0) == 0)
        pending |= (std::stoull(line.substr(7), nullptr, 16) >> (sig - 1)) & 1;
    if (!pending) return true;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return false;
}

TEST(RunDir, CommandLineValuesAreTakenLiterally) {
  const std::string dir = temp_dir("literal");
  // A space, '#' (a YAML comment), a tab, a newline, quotes, a colon, non-ASCII and a byte that
  // is not UTF-8.
  const std::string odd = "exp #3\t\"q\": 'x'\nÅ\xff";
  const std::string data = dir + "/data #1";
  const std::string cfg = write_config(dir, "cfg.yaml", config_text(dir + "/unused", 3));
  const std::string out = dir + "/runs/" + odd;
  const Result r =
      run_train(dir, {cfg, "--out", out, "data.train=" + data + "/t #2.h5", "data.val=" + data + "/v.h5"});
  ASSERT_TRUE(r.exited(0)) << r.err;
  EXPECT_TRUE(fs::exists(out + "/checkpoint.h5")) << "the run went somewhere else";
  EXPECT_TRUE(fs::exists(data + "/t #2.h5"));
  EXPECT_FALSE(fs::exists(dir + "/unused"));
  const std::string line = last_line_starting(r.out, "{\"mode\": \"train\"");
  EXPECT_EQ(json_field(line, "out"), out) << line;
  // The run's config.yaml reads back to the exact path (as !!binary: YAML text cannot hold a
  // byte that is not UTF-8).
  EXPECT_EQ(load_config(out + "/config.yaml").out, out);
  EXPECT_EQ(load_config(out + "/config.yaml").data.train, data + "/t #2.h5");

  // Typed values parse strictly: no comment, quotes, spaces or YAML forms.
  for (const std::string& ov : {"train.steps=5 #c", "train.steps='5'", "train.steps= 5", "train.lr=.inf",
                                "train.detect_anomaly=yes", "data.seed=0x10"})
    expect_one_error_line(run_train(dir, {cfg, "--out", dir + "/strict", ov}), {"config: '"});
  expect_one_error_line(run_train(dir, {cfg, "--gpus", " 2"}), {"--gpus expects a number"});
  EXPECT_FALSE(fs::exists(dir + "/strict"));
  fs::remove_all(dir);
}

TEST(RunDir, OneOwnerPerDirectoryAndNothingEmptiedBeforeTheRunMayProceed) {
  const std::string dir = temp_dir("owner");
  const std::string out = dir + "/run";
  const std::string slow = write_config(dir, "slow.yaml", config_text(dir, 1000000, 48, 1000));
  const std::string quick = write_config(dir, "quick.yaml", config_text(dir, 3));
  ASSERT_TRUE(run_train(dir, {quick, "--out", dir + "/warm"}).exited(0));  // the data files exist now

  const pid_t holder = test::spawn_train({slow, "--out", out}, dir + "/holder.out", dir + "/holder.err");
  ASSERT_TRUE(wait_for_text(dir + "/holder.out", "step      1")) << read_text(dir + "/holder.err");
  const Result second = run_train(dir, {quick, "--out", out});
  expect_one_error_line(second, {"run directory '" + out + "' is in use by another train process",
                                 "pid " + std::to_string(holder)});
  const Result second_resume = run_train(dir, {quick, "--out", out, "--resume"});
  expect_one_error_line(second_resume, {"pid " + std::to_string(holder)});
  ::kill(holder, SIGTERM);
  const int st = test::wait_status(holder);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 143)
      << "status " << st << ": " << read_text(dir + "/holder.err");

  // A fresh run into the finished run's directory: refused, naming the choices; nothing changed.
  const std::string ckpt = read_text(out + "/checkpoint.h5"), metrics = read_text(out + "/metrics.jsonl");
  ASSERT_FALSE(ckpt.empty());
  ASSERT_FALSE(metrics.empty());
  expect_one_error_line(run_train(dir, {quick, "--out", out}),
                        {"holds another run (checkpoint.h5, metrics.jsonl)", "--resume", "--overwrite"});
  EXPECT_EQ(read_text(out + "/checkpoint.h5"), ckpt);
  EXPECT_EQ(read_text(out + "/metrics.jsonl"), metrics);
  // Metrics alone (a run killed before its first checkpoint) count as a run too.
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/metrics.jsonl") << "{\"step\": 1, \"loss\": 1.5}\n";
  expect_one_error_line(run_train(dir, {quick, "--out", dir + "/m"}), {"holds another run (metrics.jsonl)"});
  EXPECT_EQ(read_text(dir + "/m/metrics.jsonl"), "{\"step\": 1, \"loss\": 1.5}\n");

  // --overwrite removes the old run's files (and the temp files a killed run left), keeps others.
  std::ofstream(out + "/notes.txt") << "mine\n";
  const std::string stale = temp_path_for(out + "/checkpoint.h5");
  std::ofstream(stale) << "half";
  const Result over = run_train(dir, {quick, "--out", out, "--overwrite"});
  ASSERT_TRUE(over.exited(0)) << over.err;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_EQ(read_text(out + "/notes.txt"), "mine\n");
  EXPECT_EQ(H5Reader(out + "/checkpoint.h5").attr_int("/", "step"), 3);
  EXPECT_EQ(read_text(out + "/metrics.jsonl").find("\"step\": 4"), std::string::npos) << "old metrics kept";
  EXPECT_TRUE(temp_files(out).empty());
  fs::remove_all(dir);
}

TEST(RunDir, RunsGeneratingTheSameDataFileAtOnceAgree) {
  const std::string dir = temp_dir("datarace");
  // Generation takes a while (4096 chains), so the runs started together all find the file absent.
  const std::string cfg = write_config(dir, "cfg.yaml", config_text(dir + "/data", 1, 4096));
  constexpr int kRuns = 4;
  std::vector<pid_t> pids;
  for (int i = 0; i < kRuns; ++i) {
    const std::string n = std::to_string(i);
    pids.push_back(test::spawn_train({cfg, "--out", dir + "/run" + n}, dir + "/o" + n, dir + "/e" + n));
  }
  int generated = 0;
  for (int i = 0; i < kRuns; ++i) {
    const int st = test::wait_status(pids[i]);
    const std::string n = std::to_string(i);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "run " << i << ": " << read_text(dir + "/e" + n);
    generated += read_text(dir + "/o" + n).find("generated 4096 training chains") != std::string::npos;
  }
  EXPECT_EQ(generated, 1) << "exactly one run publishes the file; the others use it";
  EXPECT_TRUE(temp_files(dir + "/data").empty());
  // All trained on the same data: the same seeds give the same checkpoints, byte for byte.
  for (int i = 1; i < kRuns; ++i)
    EXPECT_EQ(read_text(dir + "/run" + std::to_string(i) + "/checkpoint.h5"),
              read_text(dir + "/run0/checkpoint.h5"));
  fs::remove_all(dir);
}

// SIGINT and SIGTERM after a few steps; the resumed run ends where an unbroken one does, the
// checkpoints identical files.
TEST(RunDir, SignalsStopAfterTheStepWithACheckpointAndResumeIsBitwise) {
  const std::string dir = temp_dir("signals");
  // 400 steps of ~1.5 ms: the signal lands long before the end.
  const std::string cfg = write_config(dir, "cfg.yaml", config_text(dir, 400, 48, 1000));
  const Result ref = run_train(dir, {cfg, "--out", dir + "/ref"});
  ASSERT_TRUE(ref.exited(0)) << ref.err;
  const std::string ref_ckpt = read_text(dir + "/ref/checkpoint.h5");
  for (const int sig : {SIGINT, SIGTERM}) {
    const std::string name = sig == SIGINT ? "SIGINT" : "SIGTERM", out = dir + "/" + name;
    const pid_t pid = test::spawn_train({cfg, "--out", out}, out + ".out", out + ".err");
    ASSERT_TRUE(wait_for_text(out + ".out", "step      7")) << read_text(out + ".err");
    ::kill(pid, sig);
    const int st = test::wait_status(pid);
    const std::string err = read_text(out + ".err");
    ASSERT_TRUE(WIFEXITED(st)) << name << ": status " << st << ", " << err;
    EXPECT_EQ(WEXITSTATUS(st), 128 + sig) << err;
    std::smatch m;
    ASSERT_TRUE(std::regex_match(err, m,
                                 std::regex("train: stopped by " + name +
                                            " after step ([0-9]+): checkpoint "
                                            "written to (.*); continue with --resume\n")))
        << err;
    const int64_t step = std::stoll(m[1]);
    EXPECT_EQ(m[2], out + "/checkpoint.h5");
    EXPECT_GE(step, 7);
    EXPECT_LT(step, 400) << "the run was not stopped";
    EXPECT_EQ(H5Reader(out + "/checkpoint.h5").attr_int("/", "step"), step);
    const Result resumed = run_train(dir, {cfg, "--out", out, "--resume"});
    ASSERT_TRUE(resumed.exited(0)) << resumed.err;
    EXPECT_NE(resumed.out.find("resumed from " + out + "/checkpoint.h5 at step " + std::to_string(step)),
              std::string::npos);
    EXPECT_TRUE(read_text(out + "/checkpoint.h5") == ref_ckpt)
        << name << ": the resumed run's checkpoint differs";
  }

  // A second signal while the first is handled: the process ends at once (by the signal), and
  // the last good checkpoint is what is on disk. A larger model (a step of ~400 ms here), so that
  // both signals land within one step; the second is sent once the first has been delivered (no
  // longer pending), so that the two are not merged into one.
  const std::string out = dir + "/twice";
  const pid_t pid = test::spawn_train({cfg, "--out", out, "model.d_model=256", "model.n_layers=4",
                                       "model.c_z=32", "train.batch_size=32", "train.checkpoint_every=2"},
                                      dir + "/t.out", dir + "/t.err");
  ASSERT_TRUE(wait_for_text(dir + "/t.out", "checkpoint step 2 "));
  ::kill(pid, SIGINT);
  ASSERT_TRUE(wait_until_delivered(pid, SIGINT));
  ::kill(pid, SIGINT);
  const int st = test::wait_status(pid);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT)
      << "status " << st << ": " << read_text(dir + "/t.err");
  const int64_t kept = H5Reader(out + "/checkpoint.h5").attr_int("/", "step");  // loads: whole
  EXPECT_TRUE(kept >= 2 && kept % 2 == 0) << kept;
  EXPECT_EQ(read_text(dir + "/t.err"), "") << "no stop line: the second signal ended it";
  fs::remove_all(dir);
}

// The --gpus launcher shares the stop request with its workers (run/launch.cpp): a signal to one
// process of the group is seen by every one, and each still counts only its own signals (a first
// signal of its own is a flag, not the end).
TEST(RunDir, InterruptsAreSharedWithForkedWorkers) {
  const pf::InterruptGuard guard;
  pf::share_interrupts_with_children();
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    char c;
    if (::read(go[0], &c, 1) != 1) ::_exit(2);          // the parent has been signalled
    if (pf::interrupt_signal() != SIGTERM) ::_exit(3);  // and the child sees it
    ::raise(SIGINT);                                    // the child's own first signal
    ::_exit(pf::interrupt_signal() == SIGINT && pf::interrupt_exit_code() == 128 + SIGINT ? 0 : 4);
  }
  ::raise(SIGTERM);  // the parent's first signal: a flag
  EXPECT_EQ(pf::interrupt_signal(), SIGTERM);
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child status " << st
                                                     << " (2: no go, 3: the parent's signal "
                                                        "not seen, 4: its own signal not recorded)";
  EXPECT_EQ(pf::interrupt_signal(), SIGTERM) << "the parent's own signal comes first";
  ::close(go[0]);
  ::close(go[1]);
}

// A full disk: the run directory on a tmpfs filled up to less than a checkpoint's size.
TEST(RunDir, FullDiskAtACheckpointKeepsTheLastGoodOne) {
  const std::string dir = temp_dir("full");
  const std::string mnt = dir + "/mnt";
  fs::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno)
                 << "): needs root with CAP_SYS_ADMIN";
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string out = mnt + "/run";
  const std::string cfg = write_config(dir, "cfg.yaml", config_text(dir, 3));
  ASSERT_TRUE(run_train(dir, {cfg, "--out", out}).exited(0));
  const std::string good = read_text(out + "/checkpoint.h5");
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(mnt.c_str(), &vfs), 0);
  const uint64_t free_bytes = uint64_t(vfs.f_bavail) * vfs.f_frsize, keep = good.size() / 2;
  ASSERT_GT(free_bytes, keep);
  std::ofstream(mnt + "/filler", std::ios::binary) << std::string(free_bytes - keep, 'x');
  const Result r = run_train(dir, {cfg, "--out", out, "--resume", "train.steps=6"});
  expect_one_error_line(r, {"the checkpoint of step 6 could not be written", "No space left on device",
                            "the last good checkpoint (step 3) is kept"});
  EXPECT_EQ(read_text(out + "/checkpoint.h5"), good);
  EXPECT_TRUE(temp_files(out).empty());
  ::umount2(mnt.c_str(), MNT_DETACH);
  fs::remove_all(dir);
}

TEST(RunDir, ContradictionsSizesAndLongValuesAreOneLine) {
  const std::string dir = temp_dir("refused");
  const std::string cfg = write_config(dir, "cfg.yaml", config_text(dir, 3));
  const std::string ck = dir + "/none.h5";
  const std::vector<std::pair<std::vector<std::string>, std::string>> refused = {
      {{cfg, "--eval", ck, "--gradcheck"}, "--eval and --gradcheck cannot be combined"},
      {{cfg, "--eval", ck, "--resume"}, "--eval and --resume cannot be combined"},
      {{cfg, "--gradcheck", "--overwrite"}, "--gradcheck and --overwrite cannot be combined"},
      {{cfg, "--gradcheck", "--gpus", "2"}, "--gradcheck and --gpus cannot be combined"},
      {{"--check-env", "--gradcheck"}, "--check-env and --gradcheck cannot be combined"},
      {{cfg, "--resume", "--overwrite"}, "--resume and --overwrite cannot be combined"},
      {{cfg, "--out", "a", "--out", "b"}, "--out is given twice"},
      {{cfg, "model.relpos_clip=2000000000"}, "'model.relpos_clip' (2000000000) is too large"},
      {{cfg, "model.d_model=1000000", "model.n_heads=1"}, "'model.d_model' 1000000"},
      {{cfg, "data.n_train=2000000000", "data.n_res=2000000"}, "'data.n_train' 2000000000"},
      {{cfg, "train.batch_size=8", "data.n_res=1000000", "model.c_z=64"}, "'train.batch_size' 8"},
  };
  for (const auto& [args, part] : refused) {
    SCOPED_TRACE(part);
    expect_one_error_line(run_train(dir, args), {part});
  }
  // An overlong value is echoed cut, with its length.
  const Result r = run_train(dir, {cfg, "data.task=" + std::string(100000, 'x')});
  expect_one_error_line(r, {"'data.task' must be one of chain, relpos", "…(100000 bytes)"});
  EXPECT_LT(r.err.size(), 400u);
  EXPECT_FALSE(fs::exists(dir + "/train.h5")) << "a refused run started work";
  fs::remove_all(dir);
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PF_TEST_ASAN 1
#endif
#endif
#if !defined(__SANITIZE_ADDRESS__) && !defined(PF_TEST_ASAN)
// Host memory runs out (an address-space limit): the line names the size asked for and the keys
// that drive it. (Not under ASan, which needs the address space for its shadow.)
TEST(RunDir, HostOutOfMemoryNamesTheSizeAndTheKeys) {
  const std::string dir = temp_dir("oom");
  const std::string cfg = write_config(dir, "cfg.yaml", config_text(dir, 2));
  ASSERT_TRUE(run_train(dir, {cfg, "--out", dir + "/warm"}).exited(0));  // the data files exist now
  // One layer's pair representation alone is 64 × 200² × 64 × 4 B = 625 MiB; under a 1 GiB limit
  // the activations of the step cannot all be had.
  const std::vector<std::string> args = {cfg,
                                         "--out",
                                         dir + "/big",
                                         "data.n_res=200",
                                         "data.train=" + dir + "/b.h5",
                                         "data.val=" + dir + "/bv.h5",
                                         "train.batch_size=64",
                                         "model.c_z=64",
                                         "data.n_train=64"};
  const std::string o = dir + "/oom.out", e = dir + "/oom.err";
  const pid_t pid = ::fork();
  if (pid == 0) {  // the limit is inherited by the train process it starts; its status passed up
    struct rlimit lim {
      size_t{1} << 30, size_t{1} << 30
    };
    ::setrlimit(RLIMIT_AS, &lim);
    const int s = test::wait_status(test::spawn_train(args, o, e));
    ::_exit(WIFEXITED(s) ? WEXITSTATUS(s) : 100);
  }
  Result r;
  r.status = test::wait_status(pid);
  r.err = read_text(e);
  expect_one_error_line(
      r, {"out of host memory", "MiB", "train.batch_size × data.n_res²", "64 × 200² × (64 + 2)"});
  fs::remove_all(dir);
}
#endif

}  // namespace
}  // namespace pf
