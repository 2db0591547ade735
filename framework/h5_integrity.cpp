// The integrity header of the HDF5 files pairflash writes: see h5_integrity.h.
#include "framework/h5_integrity.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/check.h"

namespace pf::h5_integrity {

namespace {

constexpr char kMagic[] = "pairflash-h5 integrity v1\n";
constexpr size_t kMagicLen = sizeof(kMagic) - 1;
constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

// pf64: a 64-bit hash that catches corruption (it is not cryptographic: it does not stop a
// forger). Words are 8 bytes little-endian; each step h <- rotl(h ^ w, 29) * K1 + w is a
// bijection of h for a fixed w, so a change confined to one word always changes h at that step
// and, the later steps being bijections too, the end result before the final mixing.
// Throughput: one multiply per 8 bytes, a few GB/s, well above a disk's read rate.
class Pf64 {
 public:
  // p: a multiple of 8 bytes.
  void words(const unsigned char* p, size_t bytes) {
    for (size_t i = 0; i + 8 <= bytes; i += 8) step(load(p + i, 8));
    n_ += bytes;
  }
  // The last k < 8 bytes (zero-padded into one word), then the length and a final mix.
  uint64_t finish(const unsigned char* tail, size_t k) {
    if (k) step(load(tail, k));
    n_ += k;
    uint64_t h = h_ ^ (n_ * kK2);
    h ^= h >> 31;
    h *= kK3;
    h ^= h >> 29;
    h *= kK2;
    h ^= h >> 32;
    return h;
  }

 private:
  static constexpr uint64_t kK1 = 0xea8ff5f8d837115fULL, kK2 = 0x50a74cff026f4c85ULL,
                            kK3 = 0x8f8de0e973e1d037ULL;  // odd, drawn at random
  static uint64_t load(const unsigned char* p, size_t k) {
    uint64_t w = 0;
    for (size_t i = 0; i < k; ++i) w |= uint64_t{p[i]} << (8 * i);
    return w;
  }
  void step(uint64_t w) {
    uint64_t x = h_ ^ w;
    h_ = ((x << 29) | (x >> 35)) * kK1 + w;
  }
  uint64_t h_ = kK3;
  uint64_t n_ = 0;
};

uint64_t pf64(const unsigned char* p, size_t n) {
  Pf64 h;
  h.words(p, n / 8 * 8);
  return h.finish(p + n / 8 * 8, n % 8);
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// The user block for a file of `length` bytes whose bytes after the user block hash to `hash`.
void fill_header(unsigned char* block, uint64_t length, uint64_t hash) {
  const std::string text =
      std::string(kMagic) + "bytes " + std::to_string(length) + "\nhash " + hex64(hash) + "\n";
  std::memset(block, 0, kUserBlock);
  std::memcpy(block, text.data(), text.size());
}

// read(2) until `n` bytes or the end of the file; the count read. Errors: -1 with errno.
ssize_t read_full(int fd, unsigned char* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

// How many of the first kMagicLen bytes of `head` differ from the magic line.
size_t magic_differences(const unsigned char* head) {
  size_t differ = 0;
  for (size_t i = 0; i < kMagicLen; ++i) differ += head[i] != static_cast<unsigned char>(kMagic[i]);
  return differ;
}

// Files whose first line is our magic line must be exactly as written: length and hash are
// checked here, before HDF5 parses a byte (HDF5 1.10 does not check its own metadata and can
// crash on a corrupt file). A first line that differs from the magic in fewer than half of its
// bytes is ours with a damaged header (another tool's user block does not come that close by
// chance), refused too: otherwise a flip in the magic line would hand a corrupt file to HDF5.
// Other files (h5py, other tools) are left to HDF5 as before.
void check_integrity(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // HDF5's open below reports it
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  unsigned char head[kUserBlock];
  ssize_t got = read_full(fd, head, kUserBlock);
  PF_CHECK(got >= 0, "cannot read HDF5 file " << path << ": " << std::strerror(errno));
  if (static_cast<size_t>(got) < kMagicLen) return;
  const size_t differ = magic_differences(head);
  if (2 * differ >= kMagicLen) return;  // not ours
  if (differ > 0)
    PF_FAIL(path << ": corrupt or truncated HDF5 file: the first line of its pairflash integrity header is "
                    "damaged ("
                 << differ << " of its " << kMagicLen << " bytes differ from '"
                 << std::string(kMagic, kMagicLen - 1) << "')");

  // The header: "bytes N\nhash X\n" after the magic, then NULs up to the end of the user block.
  const std::string block(reinterpret_cast<const char*>(head), static_cast<size_t>(got));
  unsigned long long want_len = 0, want_hash = 0;
  int used = 0;
  const bool parsed = std::sscanf(block.c_str() + kMagicLen, "bytes %20llu\nhash %16llx\n%n", &want_len,
                                  &want_hash, &used) == 2 &&
                      used > 0;
  const size_t end = kMagicLen + static_cast<size_t>(used);
  const bool header_ok =
      parsed &&
      block.compare(kMagicLen, static_cast<size_t>(used),
                    "bytes " + std::to_string(want_len) + "\nhash " + hex64(want_hash) + "\n") == 0 &&
      block.find_first_not_of('\0', end) ==
          std::string::npos;  // NULs up to the end (of the file, if shorter)
  struct stat st {};
  const long long size = ::fstat(fd, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
  if (!header_ok) {
    PF_FAIL(path << ": corrupt or truncated HDF5 file: its pairflash integrity header (the first "
                 << kUserBlock << " bytes) is damaged or cut short; found " << size << " bytes");
  }

  // Chunks of 1 MiB (a multiple of 8, so only the last read is partial); a small file gets a
  // buffer its own size (+8: the read that finds the end).
  const size_t rest = size > static_cast<long long>(kUserBlock) ? static_cast<size_t>(size) - kUserBlock : 0;
  std::vector<unsigned char> buf(std::min<size_t>(size_t{1} << 20, (rest / 8 + 1) * 8));
  Pf64 h;
  uint64_t length = static_cast<uint64_t>(got);
  while (true) {
    got = read_full(fd, buf.data(), buf.size());
    PF_CHECK(got >= 0, "cannot read HDF5 file " << path << ": " << std::strerror(errno));
    length += static_cast<uint64_t>(got);
    const size_t whole = static_cast<size_t>(got) / 8 * 8;
    h.words(buf.data(), whole);
    if (static_cast<size_t>(got) < buf.size()) {
      const uint64_t found_hash = h.finish(buf.data() + whole, static_cast<size_t>(got) - whole);
      if (length != want_len || found_hash != want_hash)
        PF_FAIL(path << ": corrupt or truncated HDF5 file: expected " << want_len << " bytes with hash "
                     << hex64(want_hash) << ", found " << length << " bytes / hash " << hex64(found_hash));
      return;
    }
  }
}

}  // namespace

bool is_hdf5_image(const unsigned char* p, size_t n) {
  return n >= sizeof kHdf5Signature && std::memcmp(p, kHdf5Signature, sizeof kHdf5Signature) == 0;
}

void fill_header(unsigned char* image, size_t length) {
  fill_header(image, length, pf64(image + kUserBlock, length - kUserBlock));
}

void check(const std::string& path) { check_integrity(path); }

}  // namespace pf::h5_integrity
