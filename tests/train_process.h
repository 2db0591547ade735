// The real `train` program as a child process, for the tests that drive it from outside
// (crashes, signals, runs side by side): started with stdout and stderr going to files.
// PF_TRAIN_BIN (the program's path) comes from tests/CMakeLists.txt.
#pragma once
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#ifndef PF_TRAIN_BIN
#error "PF_TRAIN_BIN (the path of the train program) must be defined by the build"
#endif

namespace pf::test {

// Starts `train args...` with stdout and stderr to files; returns its pid. Children run with
// OMP_NUM_THREADS=1 (on a loaded 2-core machine OpenMP's spinning threads make a tiny step 30x
// slower; no result depends on it) and the sanitizers' options of this process, if any.
inline pid_t spawn_train(const std::vector<std::string>& args, const std::string& out_path,
                         const std::string& err_path) {
  std::vector<std::string> argv_s{PF_TRAIN_BIN};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s{"OMP_NUM_THREADS=1", "PATH=/usr/bin:/bin"};
  for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"})
    if (const char* v = std::getenv(name)) env_s.push_back(std::string(name) + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {  // child: only async-signal-safe calls until exec
    const int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (o < 0 || e < 0) ::_exit(126);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

// The wait status of a child (retried on EINTR); -1 if it cannot be had.
inline int wait_status(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return status;
}

// A fresh, empty directory of the system's temp directory for one test of this process.
inline std::string temp_dir(const std::string& name) {
  const std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("pairflash_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace pf::test
