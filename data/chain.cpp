// The chain data set: generation, HDF5 files, batches (conventions in chain.h).
#include "data/chain.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <random>
#include <sstream>

#include "framework/h5io.h"
#include "kernels/check.h"

namespace pf {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// 64-bit finaliser (SplitMix64): turns nearby seeds into unrelated ones.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Uniform in [0, 1) with 53 random bits.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Uniform in {0..n-1} without modulo bias (rejects the few draws below 2^64 mod n).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;
  uint64_t x = rng();
  while (x < threshold) x = rng();
  return x % n;
}

void check_sizes(int S, int N, int n_types, const char* who) {
  PF_CHECK(S >= 1, who << ": expected at least 1 chain, found S = " << S);
  PF_CHECK(N >= kChainMinResidues,
           who << ": expected chains of at least " << kChainMinResidues
               << " residues (every residue needs a neighbour j with |i-j| > 2), found N = " << N);
  PF_CHECK(n_types >= 1, who << ": expected at least 1 residue type, found n_types = " << n_types);
  PF_CHECK(static_cast<int64_t>(S) * N * 3 <= std::numeric_limits<int32_t>::max(),
           who << ": S·N·3 = " << static_cast<int64_t>(S) * N * 3 << " coordinates is too many");
}

}  // namespace

// label_i = t_j for the nearest j with |i-j| > 2 (ties: smaller j).   x:(N,3) t:(N) -> labels:(N)
void chain_labels(const float* x, const int32_t* t, int N, int32_t* labels) {
  PF_CHECK(N >= kChainMinResidues, "chain_labels: expected N >= " << kChainMinResidues << ", found " << N);
  for (int i = 0; i < N; ++i) {
    double best = std::numeric_limits<double>::infinity();
    int best_j = -1;
    const double xi = x[3 * i], yi = x[3 * i + 1], zi = x[3 * i + 2];
    for (int j = 0; j < N; ++j) {
      if (std::abs(i - j) <= 2) continue;
      const double dx = xi - x[3 * j], dy = yi - x[3 * j + 1], dz = zi - x[3 * j + 2];
      const double d = std::sqrt((dx * dx + dy * dy) + dz * dz);
      if (d < best) {  // strict: the first (smaller) j wins a tie
        best = d;
        best_j = j;
      }
    }
    labels[i] = t[best_j];  // best_j >= 0 because N >= 6
  }
}

void check_chain_task(const std::string& task, const std::string& who) {
  PF_CHECK(task == "chain" || task == "relpos",
           who << ": expected task 'chain' or 'relpos', found '" << task << "'");
}

// (t_{i−1} + t_{i+2}) mod K with types past either end counting as 0.   t:(N) -> labels:(N)
void relpos_labels(const int32_t* t, int N, int n_types, int32_t* labels) {
  PF_CHECK(n_types >= 1, "relpos_labels: expected n_types >= 1, found " << n_types);
  for (int i = 0; i < N; ++i) {
    const int64_t before = i >= 1 ? t[i - 1] : 0, after = i + 2 < N ? t[i + 2] : 0;
    labels[i] = static_cast<int32_t>((before + after) % n_types);
  }
}

namespace {

void check_spec(const ChainSpec& spec, const std::string& who) {
  check_sizes(spec.S, spec.n_max, spec.n_types, who.c_str());
  PF_CHECK(spec.n_min >= kChainMinResidues && spec.n_min <= spec.n_max,
           who << ": expected " << kChainMinResidues << " <= n_min <= n_max = " << spec.n_max
               << " (every residue needs a neighbour j with |i-j| > 2), found n_min = " << spec.n_min);
  check_chain_task(spec.task, who);
}

// Sample s's generator: its own stream, from (seed, split, s) only.
std::mt19937_64 sample_rng(const ChainSpec& spec, int s) {
  const uint64_t split_seed = splitmix64(spec.seed ^ fnv1a64(spec.split));
  return std::mt19937_64(splitmix64(split_seed + 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(s) + 1)));
}

// The first draw of a sample of a variable-length set; a fixed-length set draws nothing.
int draw_length(const ChainSpec& spec, std::mt19937_64& rng) {
  if (spec.n_min == spec.n_max) return spec.n_max;
  return spec.n_min +
         static_cast<int>(uniform_below(rng, static_cast<uint64_t>(spec.n_max - spec.n_min) + 1));
}

}  // namespace

bool ChainSet::fixed_length() const {
  for (int32_t n : lengths)
    if (n != N) return false;
  return true;
}

std::vector<int32_t> chain_lengths(const ChainSpec& spec) {
  check_spec(spec, "chain_lengths");
  std::vector<int32_t> lengths(static_cast<size_t>(spec.S));
  for (int s = 0; s < spec.S; ++s) {
    std::mt19937_64 rng = sample_rng(spec, s);
    lengths[s] = draw_length(spec, rng);
  }
  return lengths;
}

ChainSet generate_chains(const ChainSpec& spec) {
  check_spec(spec, "generate_chains");
  const int S = spec.S, N = spec.n_max, K = spec.n_types;
  ChainSet set;
  set.S = S;
  set.N = N;
  set.n_types = K;
  set.seed = spec.seed;
  set.split = spec.split;
  set.task = spec.task;
  set.tokens.assign(static_cast<size_t>(S) * N, 0);  // zeros stay as the padding
  set.labels.assign(static_cast<size_t>(S) * N, 0);
  set.coords.assign(static_cast<size_t>(S) * N * 3, 0.0f);
  set.lengths.resize(static_cast<size_t>(S));
  for (int s = 0; s < S; ++s) {
    std::mt19937_64 rng = sample_rng(spec, s);
    const int n = draw_length(spec, rng);
    set.lengths[s] = n;
    int32_t* t = set.tokens.data() + static_cast<size_t>(s) * N;
    float* xf = set.coords.data() + static_cast<size_t>(s) * N * 3;
    for (int i = 0; i < n; ++i) t[i] = static_cast<int32_t>(uniform_below(rng, static_cast<uint64_t>(K)));
    // u uniform on the sphere: z uniform in [-1, 1], azimuth uniform in [0, 2π) (Archimedes).
    double x = 0, y = 0, z = 0;
    xf[0] = xf[1] = xf[2] = 0.0f;
    for (int i = 1; i < n; ++i) {
      const double uz = 2.0 * uniform01(rng) - 1.0;
      const double phi = kTwoPi * uniform01(rng);
      const double r = std::sqrt(std::max(0.0, 1.0 - uz * uz));
      x += kChainBondLength * r * std::cos(phi);
      y += kChainBondLength * r * std::sin(phi);
      z += kChainBondLength * uz;
      xf[3 * i] = static_cast<float>(x);
      xf[3 * i + 1] = static_cast<float>(y);
      xf[3 * i + 2] = static_cast<float>(z);
    }
    // The coordinates are drawn for both tasks, so that a relpos set has the chain set's types.
    int32_t* labels = set.labels.data() + static_cast<size_t>(s) * N;
    if (spec.task == "relpos")
      relpos_labels(t, n, K, labels);
    else
      chain_labels(xf, t, n, labels);
  }
  return set;
}

ChainSet generate_chains(int S, int N, int n_types, uint64_t seed, const std::string& split,
                         const std::string& task) {
  return generate_chains(ChainSpec{S, N, N, n_types, seed, split, task});
}

namespace {

// write_chains; with replace = false a file already at `path` stays and the result is false.
bool write_chains_file(const std::string& path, const ChainSet& set, bool replace) {
  check_sizes(set.S, set.N, set.n_types, ("write_chains " + path).c_str());
  check_chain_task(set.task, "write_chains " + path);
  const size_t SN = static_cast<size_t>(set.S) * set.N;
  PF_CHECK(set.tokens.size() == SN && set.labels.size() == SN && set.coords.size() == 3 * SN,
           "write_chains " << path << ": expected tokens and labels of " << SN << " and coords of " << 3 * SN
                           << " elements for S = " << set.S << ", N = " << set.N << ", found "
                           << set.tokens.size() << ", " << set.labels.size() << " and " << set.coords.size());
  PF_CHECK(set.lengths.empty() || set.lengths.size() == static_cast<size_t>(set.S),
           "write_chains " << path << ": expected lengths of " << set.S << " chains, found "
                           << set.lengths.size());
  for (int s = 0; s < static_cast<int>(set.lengths.size()); ++s)
    PF_CHECK(set.lengths[s] >= kChainMinResidues && set.lengths[s] <= set.N,
             "write_chains " << path << ": expected lengths in [" << kChainMinResidues << ", N = " << set.N
                             << "], found lengths[" << s << "] = " << set.lengths[s]);
  H5Writer w(path);
  w.write_dataset("tokens", set.tokens.data(), {set.S, set.N});
  w.write_dataset("coords", set.coords.data(), {set.S, set.N, 3});
  w.write_dataset("labels", set.labels.data(), {set.S, set.N});
  // Fixed-length files stay as they always were (no lengths dataset).
  if (!set.fixed_length()) w.write_dataset("lengths", set.lengths.data(), {set.S});
  w.write_attr("/", "n_types", static_cast<int64_t>(set.n_types));
  w.write_attr("/", "seed", set.seed);
  w.write_attr("/", "format_version", static_cast<int64_t>(kChainFormatVersion));
  w.write_attr("/", "split", set.split);
  w.write_attr("/", "task", set.task);
  if (!replace) return w.commit_new();
  w.commit();
  return true;
}

}  // namespace

void write_chains(const std::string& path, const ChainSet& set) { write_chains_file(path, set, true); }

namespace {

// The attributes and shape of a chain file, checked; the data themselves are not read.
struct ChainHeader {
  int S = 0, N = 0, n_types = 0;
  uint64_t seed = 0;
  std::string split, task = "chain";
};

ChainHeader read_header(const H5Reader& r) {
  const std::string& path = r.path();
  ChainHeader h;
  const int64_t version = r.attr_int("/", "format_version");
  PF_CHECK(version == kChainFormatVersion, "chain file " << path << ": format_version " << version
                                                         << " is not supported (this build reads "
                                                         << kChainFormatVersion << ")");
  const int64_t K = r.attr_int("/", "n_types");
  PF_CHECK(K >= 1 && K <= std::numeric_limits<int32_t>::max(),
           "chain file " << path << ": expected attribute n_types >= 1, found " << K);
  h.n_types = static_cast<int>(K);
  h.seed = r.attr_uint64("/", "seed");
  if (r.has_attr("/", "split")) h.split = r.attr_string("/", "split");
  if (r.has_attr("/", "task")) h.task = r.attr_string("/", "task");
  check_chain_task(h.task, "chain file " + path);
  for (const char* name : {"tokens", "coords", "labels"})
    PF_CHECK(r.has(name), "chain file " << path << ": dataset '" << name << "' not found");
  const std::vector<int64_t> shape = r.shape("tokens");
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  PF_CHECK(shape.size() == 2 && shape[0] >= 1 && shape[1] >= kChainMinResidues && shape[0] <= kMax &&
               shape[1] <= kMax / 3 && shape[0] * shape[1] * 3 <= kMax,  // no overflow: each <= 2^31
           "chain file " << path << ": expected dataset 'tokens' of shape [S, N] with S >= 1 and N >= "
                         << kChainMinResidues << ", found " << h5_shape_str(shape));
  h.S = static_cast<int>(shape[0]);
  h.N = static_cast<int>(shape[1]);
  return h;
}

// First element of v (S,N) outside [0, K), as "name[s, i] = v".
void check_range(const std::vector<int32_t>& v, int N, int K, const char* name, const std::string& path) {
  for (size_t k = 0; k < v.size(); ++k)
    PF_CHECK(v[k] >= 0 && v[k] < K, "chain file " << path << ": " << name << "[" << k / N << ", " << k % N
                                                  << "] = " << v[k] << " is outside [0, " << K
                                                  << ") (n_types = " << K << ")");
}

}  // namespace

namespace {

// The dataset lengths (S) in [6, N], or N for every chain when the file has none.
std::vector<int32_t> read_lengths(const H5Reader& r, const ChainHeader& h) {
  if (!r.has("lengths")) return std::vector<int32_t>(static_cast<size_t>(h.S), h.N);
  std::vector<int32_t> lengths = r.read_int32("lengths", {h.S});
  for (int s = 0; s < h.S; ++s)
    PF_CHECK(lengths[s] >= kChainMinResidues && lengths[s] <= h.N,
             "chain file " << r.path() << ": lengths[" << s << "] = " << lengths[s] << " is outside ["
                           << kChainMinResidues << ", " << h.N << "] (N = " << h.N << ")");
  return lengths;
}

}  // namespace

ChainSet read_chains(const std::string& path) {
  H5Reader r(path);
  const ChainHeader h = read_header(r);
  ChainSet set;
  set.S = h.S;
  set.N = h.N;
  set.n_types = h.n_types;
  set.seed = h.seed;
  set.split = h.split;
  set.task = h.task;
  set.tokens = r.read_int32("tokens", {h.S, h.N});
  set.coords = r.read_float("coords", {h.S, h.N, 3});
  set.labels = r.read_int32("labels", {h.S, h.N});
  check_range(set.tokens, h.N, h.n_types, "tokens", path);
  check_range(set.labels, h.N, h.n_types, "labels", path);
  for (size_t k = 0; k < set.coords.size(); ++k)
    PF_CHECK(std::isfinite(set.coords[k]), "chain file " << path << ": coords[" << k / (3 * h.N) << ", "
                                                         << (k / 3) % h.N << ", " << k % 3
                                                         << "] = " << set.coords[k] << " is not finite");
  set.lengths = read_lengths(r, h);
  for (int s = 0; s < h.S; ++s)  // the padding past each chain is zero
    for (int i = set.lengths[s]; i < h.N; ++i) {
      const size_t k = static_cast<size_t>(s) * h.N + i;
      PF_CHECK(set.tokens[k] == 0 && set.labels[k] == 0 && set.coords[3 * k] == 0 &&
                   set.coords[3 * k + 1] == 0 && set.coords[3 * k + 2] == 0,
               "chain file " << path << ": chain " << s << " has " << set.lengths[s] << " residues but row "
                             << i << " past its end is not zero padding (token " << set.tokens[k]
                             << ", label " << set.labels[k] << ")");
    }
  if (set.task == "relpos") {
    std::vector<int32_t> want(static_cast<size_t>(h.N));
    for (int s = 0; s < h.S; ++s) {
      const size_t at = static_cast<size_t>(s) * h.N;
      relpos_labels(set.tokens.data() + at, set.lengths[s], h.n_types, want.data());
      for (int i = 0; i < set.lengths[s]; ++i)
        PF_CHECK(set.labels[at + i] == want[i], "chain file " << path << ": labels[" << s << ", " << i
                                                              << "] = " << set.labels[at + i]
                                                              << " but the relpos rule gives " << want[i]);
    }
  }
  return set;
}

bool ensure_chains(const std::string& path, const ChainSpec& spec) {
  check_spec(spec, "ensure_chains " + path);
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) {
      fs::create_directories(parent, ec);
      PF_CHECK(!ec,
               "cannot create directory '" << parent.string() << "' for " << path << ": " << ec.message());
    }
    // Published without replacing: of two runs generating the same file at once, the second
    // to finish checks and uses the first one's file below.
    if (write_chains_file(path, generate_chains(spec), false)) return true;
  }
  H5Reader r(path);
  const ChainHeader h = read_header(r);
  std::string diff;
  auto compare = [&](const char* what, auto in_file, auto wanted) {
    if (in_file != wanted) {
      std::ostringstream os;
      os << (diff.empty() ? "" : "; ") << what << " " << in_file << " in the file, " << wanted
         << " requested";
      diff += os.str();
    }
  };
  compare("chains (S)", h.S, spec.S);
  compare(spec.n_min == spec.n_max ? "residues (N)" : "longest chain (N = n_res_max)", h.N, spec.n_max);
  compare("n_types", h.n_types, spec.n_types);
  compare("seed", h.seed, spec.seed);
  if (!h.split.empty()) compare("split", "'" + h.split + "'", "'" + spec.split + "'");
  compare("task", "'" + h.task + "'", "'" + spec.task + "'");
  if (diff.empty()) {  // same S, N and seed: the lengths differ only if the range does
    const std::vector<int32_t> in_file = read_lengths(r, h), wanted = chain_lengths(spec);
    if (in_file != wanted) {
      const auto [lo, hi] = std::minmax_element(in_file.begin(), in_file.end());
      std::ostringstream os;
      os << "chain lengths " << *lo << ".." << *hi << " in the file, lengths drawn from " << spec.n_min
         << ".." << spec.n_max << " requested";
      diff = os.str();
    }
  }
  PF_CHECK(diff.empty(), "data file " << path << " holds other chains than this run asks for: " << diff
                                      << ". Delete the file to regenerate it, or set another path");
  return false;
}

bool ensure_chains(const std::string& path, int S, int N, int n_types, uint64_t seed,
                   const std::string& split, const std::string& task) {
  return ensure_chains(path, ChainSpec{S, N, N, n_types, seed, split, task});
}

// ---- batches ----------------------------------------------------------------------------------

BatchSampler::BatchSampler(int S, int batch_size, uint64_t seed) : S_(S), B_(batch_size), seed_(seed) {
  PF_CHECK(S >= 1, "BatchSampler: expected at least 1 sample, found S = " << S);
  PF_CHECK(batch_size >= 1 && batch_size <= S,
           "BatchSampler: expected 1 <= batch_size <= S = " << S << ", found batch_size = " << batch_size);
  shuffle();
}

BatchSampler::BatchSampler(std::vector<int32_t> lengths, int64_t batch_tokens, uint64_t seed)
    : S_(static_cast<int>(lengths.size())),
      B_(0),
      tokens_(batch_tokens),
      lengths_(std::move(lengths)),
      seed_(seed) {
  PF_CHECK(S_ >= 1, "BatchSampler: expected at least 1 sample, found none");
  PF_CHECK(batch_tokens >= 1, "BatchSampler: expected batch_tokens >= 1, found " << batch_tokens);
  for (int s = 0; s < S_; ++s)
    PF_CHECK(lengths_[s] >= 1 && lengths_[s] <= batch_tokens,
             "BatchSampler: every sample must fit in batch_tokens = "
                 << batch_tokens << ", found length " << lengths_[s] << " (sample " << s << ")");
  shuffle();
}

void BatchSampler::shuffle() {
  perm_.resize(static_cast<size_t>(S_));
  for (int i = 0; i < S_; ++i) perm_[i] = i;
  std::mt19937_64 rng(splitmix64(splitmix64(seed_ ^ 0x62617463686573ull) + static_cast<uint64_t>(epoch_)));
  for (int i = S_ - 1; i > 0; --i)  // Fisher–Yates
    std::swap(perm_[i], perm_[uniform_below(rng, static_cast<uint64_t>(i) + 1)]);
}

std::vector<int> BatchSampler::next() {
  if (tokens_ > 0) {  // by tokens: the epoch's last batch is what is left
    if (cursor_ == S_) {
      ++epoch_;
      cursor_ = 0;
      shuffle();
    }
    std::vector<int> idx;
    int64_t used = 0;
    while (cursor_ < S_ && used + lengths_[perm_[cursor_]] <= tokens_) {
      used += lengths_[perm_[cursor_]];
      idx.push_back(perm_[cursor_++]);
    }
    return idx;  // at least one: every length fits in the budget
  }
  if (cursor_ + B_ > S_) {  // the rest of this epoch is a partial batch: dropped
    ++epoch_;
    cursor_ = 0;
    shuffle();
  }
  std::vector<int> idx(perm_.begin() + cursor_, perm_.begin() + cursor_ + B_);
  cursor_ += B_;
  return idx;
}

void BatchSampler::set_state(int64_t epoch, int64_t cursor) {
  PF_CHECK(epoch >= 0 && cursor >= 0 && cursor <= S_,
           "BatchSampler::set_state: expected epoch >= 0 and 0 <= cursor <= S = "
               << S_ << ", found epoch = " << epoch << ", cursor = " << cursor);
  epoch_ = epoch;
  cursor_ = cursor;
  shuffle();
}

namespace {
void check_consistent(const ChainSet& set, const char* who) {
  const size_t SN = static_cast<size_t>(set.S) * set.N;
  PF_CHECK(set.N >= 1 && set.tokens.size() == SN && set.labels.size() == SN && set.coords.size() == 3 * SN &&
               (set.lengths.empty() || set.lengths.size() == static_cast<size_t>(set.S)),
           who << ": inconsistent ChainSet: S = " << set.S << ", N = " << set.N
               << " but tokens, labels, coords, lengths hold " << set.tokens.size() << ", "
               << set.labels.size() << ", " << set.coords.size() << ", " << set.lengths.size()
               << " elements");
}
}  // namespace

Batch gather_batch(const ChainSet& set, const std::vector<int>& idx) {
  PF_CHECK(!idx.empty(), "gather_batch: expected at least one sample index, found none");
  check_consistent(set, "gather_batch");
  Batch b;
  b.B = static_cast<int>(idx.size());
  b.N = set.N;
  const size_t N = static_cast<size_t>(set.N);
  b.tokens.resize(idx.size() * N);
  b.labels.resize(idx.size() * N);
  b.coords.resize(idx.size() * N * 3);
  for (size_t k = 0; k < idx.size(); ++k) {
    const int s = idx[k];
    PF_CHECK(s >= 0 && s < set.S,
             "gather_batch: sample index " << s << " (position " << k << ") is outside [0, " << set.S << ")");
    PF_CHECK(set.length(s) == set.N, "gather_batch: sample "
                                         << s << " has " << set.length(s) << " of N = " << set.N
                                         << " residues; batches of chains of different lengths "
                                            "are packed (gather_packed)");
    std::copy_n(set.tokens.begin() + s * N, N, b.tokens.begin() + k * N);
    std::copy_n(set.labels.begin() + s * N, N, b.labels.begin() + k * N);
    std::copy_n(set.coords.begin() + s * N * 3, N * 3, b.coords.begin() + k * N * 3);
  }
  return b;
}

PackedBatch gather_packed(const ChainSet& set, const std::vector<int>& idx) {
  PF_CHECK(!idx.empty(), "gather_packed: expected at least one sample index, found none");
  check_consistent(set, "gather_packed");
  PackedBatch b;
  b.B = static_cast<int>(idx.size());
  b.cu_seqlens.assign(1, 0);
  for (size_t k = 0; k < idx.size(); ++k) {
    const int s = idx[k];
    PF_CHECK(s >= 0 && s < set.S, "gather_packed: sample index " << s << " (position " << k
                                                                 << ") is outside [0, " << set.S << ")");
    const int64_t T = int64_t{b.cu_seqlens.back()} + set.length(s);
    PF_CHECK(T <= std::numeric_limits<int32_t>::max(),
             "gather_packed: " << T << " residues in one batch is too many");
    b.cu_seqlens.push_back(static_cast<int32_t>(T));
  }
  const size_t T = static_cast<size_t>(b.cu_seqlens.back()), N = static_cast<size_t>(set.N);
  b.tokens.resize(T);
  b.labels.resize(T);
  b.coords.resize(3 * T);
  for (size_t k = 0; k < idx.size(); ++k) {
    const size_t s = static_cast<size_t>(idx[k]), at = static_cast<size_t>(b.cu_seqlens[k]);
    const size_t n = static_cast<size_t>(b.cu_seqlens[k + 1]) - at;
    std::copy_n(set.tokens.begin() + s * N, n, b.tokens.begin() + at);
    std::copy_n(set.labels.begin() + s * N, n, b.labels.begin() + at);
    std::copy_n(set.coords.begin() + s * N * 3, 3 * n, b.coords.begin() + 3 * at);
  }
  return b;
}

}  // namespace pf
