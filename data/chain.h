// The chain data set (docs/DESIGN.md §3): generator, HDF5 file per split, batch sampler.
//
// A sample is a freely jointed chain of N residues, x_0 = 0, x_{i+1} = x_i + 3.8·u_i with u_i
// uniform on the unit sphere, and types t_i uniform in {0..K-1}. The label of residue i is the
// type of its nearest non-local neighbour:
//   label_i = t_j,  j = argmin_{|i-j| > 2} ‖x_i − x_j‖   (ties: the smaller j)
// Every residue has such a j once N >= 6 (in a chain of 5 the middle residue has none), so
// N >= 6 is required everywhere.
//
// Lengths (data.n_res_min … n_res_max): a set may hold chains of different lengths n_s, each
// uniform in [n_min, n_max] and drawn first from the sample's own generator (a fixed-length set
// draws none, so its chains are what they always were). Rows are stored padded to N = n_max
// with token 0, label 0 and coordinates 0 past their length; a chain's labels look only at its
// own n_s residues. Batches of such a set are packed (PackedBatch: no padding at all).
//
// Tasks (data.task): "chain" is the rule above. "relpos" keeps the same chains (same types and
// coordinates for the same seed) but labels each residue by relative position alone:
//   label_i = (t_{i−1} + t_{i+2}) mod K,   t_j = 0 for j < 0 or j >= N
// so a model needs to look exactly one residue back and two ahead, and nothing else.
//
// Conventions (stated once, here):
// - Layout: tokens and labels (S,N) int32, coords (S,N,3) float32, row-major.
// - Determinism: sample s of a split draws from its own std::mt19937_64 seeded from
//   (seed, split name, s), so train and val differ, and the first S samples do not depend on
//   how many are generated. Raw 64-bit draws are turned into numbers by fixed formulas here
//   (not by <random> distributions, whose output differs between standard libraries).
// - Coordinates are accumulated in double and stored as float32; labels are computed from the
//   stored float32 values widened to double, ‖·‖ = sqrt((dx² + dy²) + dz²), so anyone reading
//   the file can recompute them exactly.
// - File: datasets tokens, coords, labels; attributes n_types, seed (uint64), format_version=1,
//   split (the split name the file was generated for) and task ("chain" or "relpos"); split and
//   task are optional when reading (files written before them are chain files). A set of
//   variable lengths also has the dataset lengths int32 [S]; without it every chain has N.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace pf {

inline constexpr double kChainBondLength = 3.8;  // Å
inline constexpr int kChainFormatVersion = 1;
inline constexpr int kChainMinResidues = 6;

// "chain" or "relpos" (see above); anything else is an error naming `who`.
void check_chain_task(const std::string& task, const std::string& who);

struct ChainSet {
  int S = 0, N = 0, n_types = 0;  // N: the longest possible chain (the padded row length)
  uint64_t seed = 0;
  std::string split;                    // "train", "val", ... ("" if the file did not say)
  std::string task = "chain";           // what the labels are: "chain" | "relpos"
  std::vector<int32_t> tokens, labels;  // (S,N), padded with 0 past each chain's length
  std::vector<float> coords;            // (S,N,3), padded with 0
  std::vector<int32_t> lengths;         // (S) in [6, N]; empty = every chain has N residues

  int length(int s) const { return lengths.empty() ? N : lengths[static_cast<size_t>(s)]; }
  bool fixed_length() const;  // every chain has N residues
};

// What to generate: S >= 1 chains with lengths uniform in [n_min, n_max] (6 <= n_min <= n_max),
// n_types >= 1 types, labelled by `task`.
struct ChainSpec {
  int S = 0, n_min = 0, n_max = 0, n_types = 0;
  uint64_t seed = 0;
  std::string split, task = "chain";
};

//   -> tokens/labels (S,n_max), coords (S,n_max,3), lengths (S)
ChainSet generate_chains(const ChainSpec& spec);
// S chains of exactly N residues.
ChainSet generate_chains(int S, int N, int n_types, uint64_t seed, const std::string& split,
                         const std::string& task = "chain");
// The lengths generate_chains(spec) gives its chains, without generating them.   -> (S)
std::vector<int32_t> chain_lengths(const ChainSpec& spec);

// The label rule for one chain, from float32 coordinates widened to double (used by
// generate_chains; exposed so that a test can feed it exact ties).   x:(N,3) t:(N) -> labels:(N)
void chain_labels(const float* x, const int32_t* t, int N, int32_t* labels);

// The relpos rule for one chain: (t_{i−1} + t_{i+2}) mod K, types past either end count as 0.
//   t:(N) in [0,K) -> labels:(N)
void relpos_labels(const int32_t* t, int N, int n_types, int32_t* labels);

// Writes the set atomically (H5Writer: temp file, fsync, rename). Fails on an inconsistent set.
void write_chains(const std::string& path, const ChainSet& set);

// Reads and validates: datasets present with shapes (S,N), (S,N,3), (S,N) and integer / float
// types, attributes present, format_version supported, task known, tokens and labels in
// [0, n_types), coords finite, lengths (if present) (S) in [6, N] with zero padding past them,
// and for the relpos task every label equal to its rule (cheap to recompute, unlike the chain
// rule). Each failure is one line naming the file.
ChainSet read_chains(const std::string& path);

// Makes sure `path` holds the chains of `spec`: generates and writes them if the file is missing
// (returns true; the caller says "generated ..."), returns false if the file is there and
// matches. A file with a different S, N (= n_max), n_types, seed, split, task or chain lengths
// is an error that says which differ and that the file should be deleted or the path changed.
// Parent directories are created as needed. Runs started side by side may generate the same
// file at once: each writes its own temp file and publishes it without replacing (framework/
// files.h); the one that finds the file already there checks it like any existing file.
bool ensure_chains(const std::string& path, const ChainSpec& spec);
bool ensure_chains(const std::string& path, int S, int N, int n_types, uint64_t seed,
                   const std::string& split, const std::string& task = "chain");

// Batches of sample indices: each epoch is a fresh permutation of 0..S-1 drawn from
// (seed, epoch); batches are consecutive slices of it. (epoch, cursor) is the whole state, so a
// resumed run continues the exact same sequence after set_state.
// - By count: batch_size samples each; the last partial batch of an epoch is dropped.
// - By tokens: as many consecutive samples as fit in batch_tokens residues (at least one); the
//   last batch of an epoch keeps what is left, so each epoch visits every sample exactly once.
class BatchSampler {
 public:
  BatchSampler(int S, int batch_size, uint64_t seed);  // 1 <= batch_size <= S
  // lengths (S) each in [1, batch_tokens]
  BatchSampler(std::vector<int32_t> lengths, int64_t batch_tokens, uint64_t seed);

  std::vector<int> next();  // indices in [0, S): batch_size of them, or by tokens

  int64_t epoch() const { return epoch_; }    // the epoch of the last batch returned (0 at first)
  int64_t cursor() const { return cursor_; }  // position in that epoch's permutation
  void set_state(int64_t epoch, int64_t cursor);

  int size() const { return S_; }
  int batch_size() const { return B_; }             // 0 when batching by tokens
  int64_t batch_tokens() const { return tokens_; }  // 0 when batching by count

 private:
  void shuffle();

  int S_, B_;
  int64_t tokens_ = 0;
  std::vector<int32_t> lengths_;
  uint64_t seed_;
  int64_t epoch_ = 0, cursor_ = 0;
  std::vector<int> perm_;
};

struct Batch {
  int B = 0, N = 0;
  std::vector<int32_t> tokens, labels;  // (B,N)
  std::vector<float> coords;            // (B,N,3)
};

// The samples `idx` (each in [0, S), at least one) of `set`, in that order; each must have N
// residues (a chain shorter than its row would train on padding: use gather_packed).
Batch gather_batch(const ChainSet& set, const std::vector<int>& idx);

// A packed batch: the chains one after the other, no padding (the layout of the packed
// attention op, framework/ops.h). Sample k is rows cu_seqlens[k] … cu_seqlens[k+1]−1.
struct PackedBatch {
  int B = 0;
  std::vector<int32_t> cu_seqlens;      // (B+1), [0] = 0
  std::vector<int32_t> tokens, labels;  // (T), T = cu_seqlens[B]
  std::vector<float> coords;            // (T,3)
  int64_t T() const { return cu_seqlens.empty() ? 0 : cu_seqlens.back(); }
};

// The samples `idx` (each in [0, S), at least one) of `set`, in that order, each with its own length.
PackedBatch gather_packed(const ChainSet& set, const std::vector<int>& idx);

}  // namespace pf
