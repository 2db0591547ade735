// libFuzzer harness: the chain data reader (data/chain.h read_chains) on arbitrary bytes written
// to a file. Every input must give a valid ChainSet or a pf::Error of one line; anything else
// (another exception, a crash, a hang, a sanitizer report, an HDF5 object left open) is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "data/chain.h"
#include "kernels/check.h"
#include "tests/fuzz/harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/pf_fuzz_chains_" + std::to_string(::getpid()) + ".h5";
  pf::fuzz::write_input(path, data, size);
  try {
    const pf::ChainSet set = pf::read_chains(path);
    // What read_chains promises about a set it returns.
    const size_t SN = static_cast<size_t>(set.S) * set.N;
    if (set.tokens.size() != SN || set.labels.size() != SN || set.coords.size() != 3 * SN) std::abort();
  } catch (const pf::Error& e) {
    pf::fuzz::expect_one_line(e);
  }
  pf::fuzz::expect_no_open_hdf5_objects();
  return 0;
}
