// libFuzzer harness: the config parser (framework/config.h) on arbitrary text.
//
// Input: YAML text, then optionally NUL-separated `key=value` overrides. Every input must either
// give a Config or a pf::Error of one line; anything else (another exception, a crash, a
// sanitizer report) is a finding. A Config that loads must also survive the round trip through
// config_to_yaml.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "framework/config.h"
#include "kernels/check.h"
#include "tests/fuzz/harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t nul; (nul = text.find('\0', start)) != std::string::npos; start = nul + 1)
    parts.push_back(text.substr(start, nul - start));
  parts.push_back(text.substr(start));
  const std::string yaml = parts.front();
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());
  pf::Config cfg;
  try {
    cfg = pf::config_from_yaml_string(yaml, overrides);
  } catch (const pf::Error& e) {
    pf::fuzz::expect_one_line(e);
    return 0;  // a clean refusal
  }
  // The resolved YAML of a valid config reads back to the same resolved YAML.
  const std::string resolved = pf::config_to_yaml(cfg);
  if (pf::config_to_yaml(pf::config_from_yaml_string(resolved)) != resolved) std::abort();
  (void)pf::config_hash(cfg);
  return 0;
}
