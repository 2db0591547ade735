#include "framework/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "kernels/check.h"

namespace pf {

std::string temp_path_for(const std::string& path) {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^ (uint64_t(::getpid()) << 32)};
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".tmp.%ld.%016llx", static_cast<long>(::getpid()),
                static_cast<unsigned long long>(rng()));
  return path + suffix;
}

bool is_temp_path(const std::string& path) {
  const size_t dot = path.rfind(".tmp.");
  if (dot == std::string::npos) return false;
  const std::string tail = path.substr(dot + 5);  // <pid>.<16 hex>
  const size_t sep = tail.find('.');
  if (sep == std::string::npos || sep == 0 || tail.size() - sep - 1 != 16) return false;
  for (size_t i = 0; i < sep; ++i)
    if (tail[i] < '0' || tail[i] > '9') return false;
  for (size_t i = sep + 1; i < tail.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(tail[i]))) return false;
  return true;
}

bool publish_new(const std::string& tmp, const std::string& path) {
  // renameat2(RENAME_NOREPLACE) where the kernel and the file system have it; else link + unlink
  // (link fails with EEXIST just as atomically).
  int rc = -1, err = ENOSYS;
#ifdef RENAME_NOREPLACE
  rc = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE);
  err = errno;
  if (rc == 0) return true;
#endif
  if (err == EINVAL || err == ENOSYS) {  // not supported here
    rc = ::link(tmp.c_str(), path.c_str());
    err = errno;
  }
  std::remove(tmp.c_str());
  if (rc == 0) return true;
  if (err == EEXIST) return false;
  PF_FAIL("cannot publish " << tmp << " as " << path << ": " << std::strerror(err));
}

}  // namespace pf
