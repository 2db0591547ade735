// Crash safety of the real `train` program: it is killed with SIGKILL at random moments (a third
// of the kills aimed at a checkpoint being written), resumed with --resume each time (or started
// afresh while no checkpoint exists), and shown to lose nothing:
// - after every kill the checkpoint on disk loads (through run::evaluate, the real loader) and is
//   never older than the last checkpoint the killed run reported as saved;
// - every resumed run continues from exactly that checkpoint's step;
// - the finished run's metrics.jsonl and final JSON line equal those of an uninterrupted run with
//   the same seed (every field but the timing ones), and its final checkpoint — weights, AdamW
//   moments, step, sampler state — is bitwise identical.
// Children run with OMP_NUM_THREADS=1: on a loaded 2-core machine OpenMP's spinning threads make
// a tiny step 30x slower; the result does not depend on it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "framework/config.h"
#include "framework/h5io.h"
#include "run/modes.h"
#include "tests/train_process.h"

namespace pf {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

using test::read_text;
using test::temp_dir;

pid_t spawn(const std::vector<std::string>& args, const std::string& out_path, const std::string& err_path) {
  return test::spawn_train(args, out_path, err_path);
}

// The last integer following `prefix` at the start of a line of `text`, or -1.
int64_t last_number_after(const std::string& text, const std::string& prefix) {
  int64_t found = -1;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) found = std::stoll(line.substr(prefix.size()));
  return found;
}

// metrics.jsonl lines with the timing field removed: equal runs give equal lists.
std::vector<std::string> metrics_without_timing(const std::string& text) {
  static const std::regex timing(R"(, "tokens_per_s": [^,}]*)");
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(std::regex_replace(line, timing, ""));
  return out;
}

// The final JSON line of a train run without its timing and out fields.
std::string final_line(const std::string& stdout_text) {
  static const std::regex drop(R"re(, "(tokens_per_s|out)": ("[^"]*"|[^,}]*))re");
  const size_t pos = stdout_text.rfind("{\"mode\": \"train\"");
  if (pos == std::string::npos) return "";
  return std::regex_replace(stdout_text.substr(pos, stdout_text.find('\n', pos) - pos), drop, "");
}

// Every dataset of a checkpoint as raw float32 bytes, and its loop-state attributes.
struct CheckpointBits {
  std::map<std::string, std::vector<float>> tensors;
  std::vector<int64_t> attrs;  // step, sampler_epoch, sampler_cursor, steps_taken
};
CheckpointBits read_bits(const std::string& path) {
  H5Reader r(path);
  CheckpointBits c;
  for (const char* group : {"model", "optim"})
    for (const std::string& name : r.list_datasets(group))
      c.tensors[std::string(group) + "/" + name] = r.read_float(std::string(group) + "/" + name);
  for (const char* a : {"step", "sampler_epoch", "sampler_cursor"}) c.attrs.push_back(r.attr_int("/", a));
  c.attrs.push_back(r.attr_int("/optim", "steps_taken"));
  return c;
}

void expect_bitwise_equal(const CheckpointBits& a, const CheckpointBits& b) {
  EXPECT_EQ(a.attrs, b.attrs) << "step, sampler_epoch, sampler_cursor, steps_taken";
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, va] : a.tensors) {
    const auto it = b.tensors.find(name);
    ASSERT_NE(it, b.tensors.end()) << name;
    ASSERT_EQ(va.size(), it->second.size()) << name;
    EXPECT_EQ(std::memcmp(va.data(), it->second.data(), va.size() * sizeof(float)), 0)
        << name << " differs from the uninterrupted run";
  }
}

TEST(CrashResume, SigkillAtRandomMomentsLosesNothingAndEndsBitwiseEqual) {
  const std::string dir = temp_dir("crash");
  // 600 steps of a tiny model with a checkpoint every 4: a run lasts ~2-4 s here, most of it in
  // checkpoint writes (each fsyncs), so random kills land both inside and between writes.
  const std::string cfg_path = dir + "/tiny.yaml";
  {
    std::ofstream f(cfg_path);
    f << "model: {n_types: 4, d_model: 16, n_heads: 2, n_layers: 1, c_z: 4, relpos_clip: 4, dist_bins: 8}\n"
         "data: {train: "
      << dir << "/train.h5, val: " << dir
      << "/val.h5, n_train: 64, n_val: 16, n_res: 12, seed: 5}\n"
         "train: {steps: 600, batch_size: 8, lr: 3.0e-3, min_lr: 3.0e-4, warmup: 10, eval_every: 50, "
         "log_every: 1, checkpoint_every: 4, seed: 2}\n"
         "device: cpu\n";
  }
  const int ckpt_every = 4;
  auto wait_exit = [](pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
  };

  // The reference: uninterrupted (it also generates the data files both runs share).
  const std::string ref_out = dir + "/reference";
  const auto ref_t0 = Clock::now();
  const int ref_status = wait_exit(spawn({cfg_path, "--out", ref_out}, dir + "/ref.out", dir + "/ref.err"));
  ASSERT_TRUE(WIFEXITED(ref_status) && WEXITSTATUS(ref_status) == 0) << read_text(dir + "/ref.err");
  // Random kills come within a twelfth of a whole run after each start, so that 16 of them
  // cannot finish the run before the last kill.
  const auto ref_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - ref_t0).count();
  const std::string ref_stdout = read_text(dir + "/ref.out");

  const std::string out = dir + "/killed";
  const std::string ckpt = out + "/checkpoint.h5";
  const Config cfg = load_config(cfg_path, {"out=" + out});
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("kill-timing seed " + std::to_string(seed));

  int kills = 0, kills_in_write = 0, resumes = 0;
  int64_t on_disk = -1;  // step of the checkpoint on disk, -1: none
  bool finished = false;
  for (int cycle = 0; !finished && cycle < 200; ++cycle) {
    const bool resume = fs::exists(ckpt);
    // A temp file left by an earlier kill stays (the program must cope with it); a write under
    // way is one whose temp file is newer than that.
    // Temp files are checkpoint.h5.tmp.<pid>.<random> (framework/files.h): the newest one counts.
    auto newest_tmp = [&] {
      auto newest = fs::file_time_type::min();
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(out, ec)) {
        std::error_code ec2;
        const auto t = fs::last_write_time(e.path(), ec2);
        if (!ec2 && e.path().filename().string().rfind("checkpoint.h5.tmp.", 0) == 0)
          newest = std::max(newest, t);
      }
      return newest;
    };
    const auto stale = newest_tmp();
    auto writing = [&] { return newest_tmp() != stale; };
    std::vector<std::string> args{cfg_path, "--out", out};
    // Without a checkpoint the directory may hold the metrics of a run killed before its first
    // one: started over explicitly.
    if (resume)
      args.push_back("--resume"), ++resumes;
    else
      args.push_back("--overwrite");
    const std::string so = dir + "/cycle.out", se = dir + "/cycle.err";
    // Emptied here, not only by the child: a kill that lands between fork and the child's own
    // open(O_TRUNC) would otherwise leave the previous cycle's output to be read as this one's
    // (seen in CI: that cycle's "resumed from … at step 64" against the 76 on disk since).
    std::ofstream(so, std::ios::trunc);
    std::ofstream(se, std::ios::trunc);
    const pid_t pid = spawn(args, so, se);
    int status = 0;
    bool exited = false;
    if (kills < 24) {
      const auto t0 = Clock::now();
      if (kills % 3 == 2) {  // aimed: kill as soon as a checkpoint write is under way
        while (!writing() && Clock::now() - t0 < std::chrono::seconds(10) &&
               !(exited = ::waitpid(pid, &status, WNOHANG) == pid))
          std::this_thread::sleep_for(std::chrono::microseconds(100));
      } else {  // anywhere: start-up, a step, an evaluation, a write
        const auto delay = std::chrono::microseconds(
            std::uniform_int_distribution<int64_t>(0, std::max<int64_t>(ref_us / 12, 1000))(rng));
        while (Clock::now() - t0 < delay && !(exited = ::waitpid(pid, &status, WNOHANG) == pid))
          std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      if (!exited) {
        const bool was_writing = writing();
        ::kill(pid, SIGKILL);
        status = wait_exit(pid);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
          ++kills;
          // A write was under way at the kill if its fresh temp file is still there afterwards.
          if (was_writing && writing()) ++kills_in_write;
        }
      }
    } else {
      status = wait_exit(pid);
    }
    const std::string text = read_text(so);
    ASSERT_EQ(read_text(se), "") << "a run wrote to stderr (cycle " << cycle << ")";
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "cycle " << cycle << ": " << text;
      finished = true;
    }
    // The resumed run started from exactly the checkpoint that was on disk.
    const int64_t resumed_at = last_number_after(text, "resumed from " + ckpt + " at step ");
    if (resumed_at >= 0) EXPECT_EQ(resumed_at, on_disk) << "cycle " << cycle;
    if (!fs::exists(ckpt)) {
      EXPECT_EQ(last_number_after(text, "checkpoint step "), -1)
          << "a checkpoint was reported but is missing";
      continue;
    }
    // The checkpoint always loads, through the program's own loader.
    testing::internal::CaptureStdout();
    EXPECT_NO_THROW(run::evaluate(cfg, ckpt)) << "cycle " << cycle;
    testing::internal::GetCapturedStdout();
    H5Reader r(ckpt);
    const int64_t step = r.attr_int("/", "step");
    // No step lost beyond the last checkpoint: the one on disk is the last one the run reported
    // saved, or the next (renamed into place just before the kill, not yet reported).
    const int64_t reported = last_number_after(text, "checkpoint step ");
    const int64_t reached = last_number_after(text, "step ");
    if (reported >= 0) {
      EXPECT_TRUE(step == reported || step == reported + ckpt_every)
          << "cycle " << cycle << ": checkpoint at step " << step << ", last reported " << reported;
    }
    EXPECT_GE(step, on_disk) << "the checkpoint went back in time";
    EXPECT_LE(step, std::max<int64_t>(reached, on_disk)) << "a checkpoint from the future";
    EXPECT_EQ(step % ckpt_every, 0);
    on_disk = step;
  }
  ASSERT_TRUE(finished) << "the run did not finish after " << kills << " kills";
  std::printf("[ figures  ] %d SIGKILLs survived (%d during a checkpoint write), %d resumes\n", kills,
              kills_in_write, resumes);
  EXPECT_GE(kills, 20);
  EXPECT_GE(kills_in_write, 4) << "too few kills landed inside a checkpoint write";

  const std::string ref_metrics = read_text(ref_out + "/metrics.jsonl");
  EXPECT_EQ(metrics_without_timing(read_text(out + "/metrics.jsonl")), metrics_without_timing(ref_metrics));
  EXPECT_FALSE(final_line(ref_stdout).empty());
  // The last cycle ran to the end: its final line must equal the reference's.
  EXPECT_EQ(final_line(read_text(dir + "/cycle.out")), final_line(ref_stdout));
  expect_bitwise_equal(read_bits(ckpt), read_bits(ref_out + "/checkpoint.h5"));
  for (const auto& e : fs::directory_iterator(out))  // the last run removed what kills left
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pf
