// data/chain: deterministic generation, the geometry and the label rule checked independently,
// the HDF5 file round trip and its validation, ensure_chains, the batch sampler and gather.
#include "data/chain.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "framework/files.h"
#include "framework/h5io.h"
#include "kernels/check.h"

namespace fs = std::filesystem;

namespace {

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const pf::Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected pf::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected pf::Error, nothing was thrown";
}

// The label rule written out independently: all (distance, j) candidates, the smallest pair.
std::vector<int32_t> brute_force_labels(const pf::ChainSet& c) {
  std::vector<int32_t> out(static_cast<size_t>(c.S) * c.N, -1);
  for (int s = 0; s < c.S; ++s) {
    const float* x = &c.coords[static_cast<size_t>(s) * c.N * 3];
    for (int i = 0; i < c.N; ++i) {
      std::vector<std::pair<double, int>> cand;
      for (int j = 0; j < c.N; ++j) {
        if (j >= i - 2 && j <= i + 2) continue;
        double d2 = 0;
        for (int a = 0; a < 3; ++a) {
          const double diff = static_cast<double>(x[3 * i + a]) - static_cast<double>(x[3 * j + a]);
          d2 += diff * diff;
        }
        cand.emplace_back(std::sqrt(d2), j);
      }
      const auto best = *std::min_element(cand.begin(), cand.end());  // ties: smaller j
      out[static_cast<size_t>(s) * c.N + i] = c.tokens[static_cast<size_t>(s) * c.N + best.second];
    }
  }
  return out;
}

class ChainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    rng_.seed(seed_);
    dir_ = fs::temp_directory_path() /
           ("pf_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(seed_));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  uint64_t fresh_seed() { return rng_(); }

  unsigned seed_ = 0;
  std::mt19937_64 rng_;
  fs::path dir_;
};

bool same(const pf::ChainSet& a, const pf::ChainSet& b) {
  return a.S == b.S && a.N == b.N && a.n_types == b.n_types && a.seed == b.seed && a.split == b.split &&
         a.tokens == b.tokens && a.labels == b.labels &&
         std::equal(a.coords.begin(), a.coords.end(), b.coords.begin(), b.coords.end(),
                    [](float x, float y) { return std::memcmp(&x, &y, sizeof x) == 0; });  // bytes
}

}  // namespace

TEST_F(ChainTest, DeterministicPerSeedAndSplit) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const uint64_t seed = fresh_seed();
  const pf::ChainSet a = pf::generate_chains(17, 33, 8, seed, "train");
  const pf::ChainSet b = pf::generate_chains(17, 33, 8, seed, "train");
  EXPECT_TRUE(same(a, b));
  ASSERT_EQ(a.tokens.size(), 17u * 33u);
  ASSERT_EQ(a.coords.size(), 17u * 33u * 3u);
  const pf::ChainSet v = pf::generate_chains(17, 33, 8, seed, "val");
  EXPECT_NE(v.tokens, a.tokens);
  EXPECT_NE(v.coords, a.coords);
  const pf::ChainSet other = pf::generate_chains(17, 33, 8, seed + 1, "train");
  EXPECT_NE(other.coords, a.coords);
  // the first samples do not depend on how many are generated
  const pf::ChainSet more = pf::generate_chains(97, 33, 8, seed, "train");
  EXPECT_TRUE(std::equal(a.tokens.begin(), a.tokens.end(), more.tokens.begin()));
  EXPECT_TRUE(std::equal(a.coords.begin(), a.coords.end(), more.coords.begin()));
  // samples of one set differ from each other
  EXPECT_FALSE(std::equal(a.coords.begin() + 3 * 33, a.coords.begin() + 6 * 33, a.coords.begin()));
  // identical files, byte for byte in their data
  pf::write_chains(file("a.h5"), a);
  pf::write_chains(file("b.h5"), b);
  EXPECT_TRUE(same(pf::read_chains(file("a.h5")), pf::read_chains(file("b.h5"))));
}

TEST_F(ChainTest, FreelyJointedGeometry) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int S = 200, N = 64;
  const pf::ChainSet c = pf::generate_chains(S, N, 8, fresh_seed(), "train");
  double mean[3] = {0, 0, 0}, mean_z2 = 0, worst = 0;
  int steps = 0;
  for (int s = 0; s < S; ++s) {
    const float* x = &c.coords[static_cast<size_t>(s) * N * 3];
    EXPECT_EQ(x[0], 0.0f);
    EXPECT_EQ(x[1], 0.0f);
    EXPECT_EQ(x[2], 0.0f);
    for (int i = 0; i + 1 < N; ++i) {
      double u[3], len2 = 0;
      for (int a = 0; a < 3; ++a) {
        u[a] = static_cast<double>(x[3 * (i + 1) + a]) - static_cast<double>(x[3 * i + a]);
        len2 += u[a] * u[a];
      }
      const double len = std::sqrt(len2);
      worst = std::max(worst, std::abs(len - 3.8));
      for (int a = 0; a < 3; ++a) mean[a] += u[a] / len;
      mean_z2 += (u[2] / len) * (u[2] / len);
      ++steps;
    }
  }
  // float32 storage of coordinates up to ~100 Å: half an ulp is ~4e-6 per coordinate.
  EXPECT_LT(worst, 1e-4) << "bond length must be 3.8 Å";
  // Directions uniform on the sphere: each mean component ~ N(0, 1/(3·12600)) -> sd 0.0051,
  // E[z²] = 1/3 with sd sqrt((1/5 - 1/9)/12600) = 0.0027. Bounds at ~6 sd.
  for (int a = 0; a < 3; ++a) EXPECT_NEAR(mean[a] / steps, 0.0, 0.03) << "axis " << a;
  EXPECT_NEAR(mean_z2 / steps, 1.0 / 3.0, 0.016);
}

TEST_F(ChainTest, LabelsMatchAnIndependentBruteForce) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (auto [S, N, K] : {std::tuple{17, 6, 3}, std::tuple{5, 7, 2}, std::tuple{9, 97, 8},
                         std::tuple{3, 257, 20}, std::tuple{1, 33, 1}}) {
    const pf::ChainSet c = pf::generate_chains(S, N, K, fresh_seed(), "train");
    EXPECT_EQ(c.labels, brute_force_labels(c)) << "S " << S << " N " << N << " K " << K;
    for (int32_t t : c.tokens) ASSERT_TRUE(t >= 0 && t < K);
  }
  // and from a file, as a reader of it would
  const pf::ChainSet c = pf::generate_chains(17, 64, 8, fresh_seed(), "val");
  pf::write_chains(file("v.h5"), c);
  const pf::ChainSet r = pf::read_chains(file("v.h5"));
  EXPECT_EQ(r.labels, brute_force_labels(r));
}

TEST(Chain, LabelRuleOnExactTies) {
  // Residues on a line at integer positions: i-3 and i+3 are both at distance exactly 3, the
  // nearest non-local ones; the tie goes to the smaller j. Types t_j = j name the winner.
  for (int N : {6, 7, 17}) {
    std::vector<float> x(3 * N, 0.0f);
    std::vector<int32_t> t(N), labels(N, -7);
    for (int i = 0; i < N; ++i) {
      x[3 * i] = static_cast<float>(i);
      t[i] = i;
    }
    pf::chain_labels(x.data(), t.data(), N, labels.data());
    for (int i = 0; i < N; ++i) EXPECT_EQ(labels[i], i >= 3 ? i - 3 : i + 3) << "N " << N << " i " << i;
  }
  // A folded chain: residue 5 sits next to residue 0 (distance 1), closer than anything else.
  const int N = 8;
  std::vector<float> x = {0, 0, 0, 4, 0, 0, 8, 0, 0, 8, 4, 0, 4, 4, 0, 0, 1, 0, 0, 5, 0, 4, 9, 0};
  std::vector<int32_t> t = {10, 11, 12, 13, 14, 15, 16, 17}, labels(N, -7);
  pf::chain_labels(x.data(), t.data(), N, labels.data());
  EXPECT_EQ(labels[0], 15);  // j = 5 at distance 1
  EXPECT_EQ(labels[5], 10);  // and back
  EXPECT_EQ(labels[1], 14);  // j = 4 at distance 4 (vs j = 5 at sqrt(17), j = 6 at sqrt(41))
  expect_error([&] { pf::chain_labels(x.data(), t.data(), 5, labels.data()); }, {"expected N >= 6, found 5"});
}

TEST_F(ChainTest, LabelsAreChanceLevelFromTheTypeAlone) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const int S = 512, N = 64, K = 8;
  const pf::ChainSet c = pf::generate_chains(S, N, K, fresh_seed(), "train");
  std::vector<int> count(K, 0);
  int same_as_own = 0;
  for (size_t k = 0; k < c.labels.size(); ++k) {
    ++count[c.labels[k]];
    same_as_own += c.labels[k] == c.tokens[k];
  }
  const double n = static_cast<double>(c.labels.size());
  // 32768 labels, 1/8 each; labels share neighbours so the effective count is lower (~1/2):
  // sd of a frequency ~ sqrt(0.125·0.875/16000) = 0.0026. Bounds at ~8 sd.
  for (int k = 0; k < K; ++k) EXPECT_NEAR(count[k] / n, 1.0 / K, 0.02) << "type " << k;
  // the label is independent of the residue's own type: the type alone predicts it at chance
  EXPECT_NEAR(same_as_own / n, 1.0 / K, 0.02);
}

TEST_F(ChainTest, WriteReadRoundTripAndAttributes) {
  const uint64_t seed = fresh_seed();
  const pf::ChainSet c = pf::generate_chains(97, 17, 5, seed, "train");
  pf::write_chains(file("t.h5"), c);
  for (const auto& e : fs::directory_iterator(fs::path(file("t.h5")).parent_path()))  // no temp file left
    EXPECT_FALSE(pf::is_temp_path(e.path().string())) << e.path();
  EXPECT_TRUE(same(pf::read_chains(file("t.h5")), c));
  pf::H5Reader r(file("t.h5"));
  EXPECT_EQ(r.attr_int("/", "n_types"), 5);
  EXPECT_EQ(r.attr_uint64("/", "seed"), seed);
  EXPECT_EQ(r.attr_int("/", "format_version"), 1);
  EXPECT_EQ(r.attr_string("/", "split"), "train");
  EXPECT_EQ(r.shape("tokens"), (std::vector<int64_t>{97, 17}));
  EXPECT_EQ(r.shape("coords"), (std::vector<int64_t>{97, 17, 3}));
  EXPECT_EQ(r.shape("labels"), (std::vector<int64_t>{97, 17}));
  // an inconsistent set is refused before anything is written
  pf::ChainSet bad = c;
  bad.labels.pop_back();
  expect_error([&] { pf::write_chains(file("bad.h5"), bad); },
               {"write_chains", "expected tokens and labels"});
  EXPECT_FALSE(fs::exists(file("bad.h5")));
}

TEST_F(ChainTest, EnsureGeneratesOnceReusesAndRejectsAMismatch) {
  const uint64_t seed = fresh_seed();
  const std::string p = file("nested/dir/train.h5");
  EXPECT_TRUE(pf::ensure_chains(p, 17, 9, 8, seed, "train"));
  ASSERT_TRUE(fs::exists(p));
  const auto stamp = fs::last_write_time(p);
  EXPECT_FALSE(pf::ensure_chains(p, 17, 9, 8, seed, "train"));
  EXPECT_EQ(fs::last_write_time(p), stamp) << "a matching file must be reused, not rewritten";
  EXPECT_TRUE(same(pf::read_chains(p), pf::generate_chains(17, 9, 8, seed, "train")));

  expect_error([&] { pf::ensure_chains(p, 18, 9, 8, seed, "train"); },
               {p, "chains (S) 17 in the file, 18 requested", "Delete the file"});
  expect_error([&] { pf::ensure_chains(p, 17, 10, 8, seed, "train"); },
               {"residues (N) 9 in the file, 10 requested"});
  expect_error([&] { pf::ensure_chains(p, 17, 9, 4, seed, "train"); },
               {"n_types 8 in the file, 4 requested"});
  expect_error([&] { pf::ensure_chains(p, 17, 9, 8, seed + 1, "train"); }, {"seed "});
  expect_error([&] { pf::ensure_chains(p, 17, 9, 8, seed, "val"); },
               {"split 'train' in the file, 'val' requested"});
  expect_error([&] { pf::ensure_chains(p, 18, 10, 8, seed, "train"); },
               {"chains (S) 17 in the file, 18 requested; residues (N) 9 in the file, 10 requested"});
  EXPECT_EQ(fs::last_write_time(p), stamp);
  expect_error([&] { pf::ensure_chains(file("x.h5"), 17, 5, 8, seed, "train"); },
               {"at least 6 residues", "N = 5"});
  EXPECT_FALSE(fs::exists(file("x.h5")));
}

TEST_F(ChainTest, CorruptedFilesAreRejected) {
  const pf::ChainSet c = pf::generate_chains(17, 9, 8, fresh_seed(), "train");
  // Writes a chain file with one thing changed by `edit`.
  auto variant = [&](const std::string& name, const std::function<void(pf::H5Writer&, pf::ChainSet&)>& edit,
                     bool tokens = true, bool coords = true, bool labels = true, bool attrs = true) {
    pf::ChainSet v = c;
    pf::H5Writer w(file(name));
    edit(w, v);
    if (tokens) w.write_dataset("tokens", v.tokens.data(), {v.S, v.N});
    if (coords) w.write_dataset("coords", v.coords.data(), {v.S, v.N, 3});
    if (labels) w.write_dataset("labels", v.labels.data(), {v.S, v.N});
    if (attrs) {
      w.write_attr("/", "n_types", static_cast<int64_t>(v.n_types));
      w.write_attr("/", "seed", v.seed);
      w.write_attr("/", "format_version", int64_t{1});
    }
    w.commit();
    return file(name);
  };
  auto nothing = [](pf::H5Writer&, pf::ChainSet&) {};
  std::string p = variant("ok.h5", nothing);
  EXPECT_EQ(pf::read_chains(p).split, "");  // no split attribute: allowed
  EXPECT_EQ(pf::read_chains(p).labels, c.labels);

  p = variant("nolabels.h5", nothing, true, true, false);
  expect_error([&] { pf::read_chains(p); }, {p, "dataset 'labels' not found"});
  p = variant("noattrs.h5", nothing, true, true, true, false);
  expect_error([&] { pf::read_chains(p); }, {p, "'format_version'", "not found"});
  p = variant(
      "v2.h5", [](pf::H5Writer& w, pf::ChainSet&) { w.write_attr("/", "format_version", int64_t{2}); }, true,
      true, true, false);
  expect_error([&] { pf::read_chains(p); }, {p, "format_version 2 is not supported"});
  p = variant("token.h5", [](pf::H5Writer&, pf::ChainSet& v) { v.tokens[3 * 9 + 5] = 8; });
  expect_error([&] { pf::read_chains(p); }, {p, "tokens[3, 5] = 8 is outside [0, 8)"});
  p = variant("label.h5", [](pf::H5Writer&, pf::ChainSet& v) { v.labels[16 * 9 + 8] = -1; });
  expect_error([&] { pf::read_chains(p); }, {p, "labels[16, 8] = -1 is outside [0, 8)"});
  p = variant("nan.h5",
              [](pf::H5Writer&, pf::ChainSet& v) { v.coords[(2 * 9 + 4) * 3 + 1] = std::nanf(""); });
  expect_error([&] { pf::read_chains(p); }, {p, "coords[2, 4, 1] = nan is not finite"});
  p = variant(
      "shape.h5",
      [](pf::H5Writer& w, pf::ChainSet& v) {
        w.write_dataset("coords", v.coords.data(), {v.S, v.N * 3});
      },
      true, false, true);
  expect_error([&] { pf::read_chains(p); }, {p, "'coords'", "expected shape [17, 9, 3], found [17, 27]"});
  p = variant(
      "dtype.h5",
      [](pf::H5Writer& w, pf::ChainSet& v) {
        std::vector<float> f(v.tokens.begin(), v.tokens.end());
        w.write_dataset("tokens", f.data(), {v.S, v.N});
      },
      false);
  expect_error([&] { pf::read_chains(p); }, {p, "'tokens'", "expected integer data", "float32"});
  p = variant(
      "short.h5",
      [](pf::H5Writer& w, pf::ChainSet& v) {
        w.write_dataset("tokens", v.tokens.data(), {v.S * 9 / 3, 3});
      },
      false);
  expect_error([&] { pf::read_chains(p); }, {p, "'tokens' of shape [S, N]", "found [51, 3]"});
  // truncated and random files
  const std::string whole = variant("whole.h5", nothing);
  const std::string half = file("half.h5");
  fs::copy_file(whole, half);
  fs::resize_file(half, fs::file_size(half) / 2);
  expect_error([&] { pf::read_chains(half); }, {half});
  expect_error([&] { pf::ensure_chains(half, 17, 9, 8, c.seed, "train"); }, {half});
  expect_error([&] { pf::read_chains(file("absent.h5")); }, {file("absent.h5"), "not found"});
}

TEST_F(ChainTest, SamplerCoversEveryIndexOncePerEpochAndResumesExactly) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (auto [S, B] :
       {std::pair{97, 10}, std::pair{17, 17}, std::pair{1, 1}, std::pair{33, 1}, std::pair{64, 32}}) {
    SCOPED_TRACE("S " + std::to_string(S) + " B " + std::to_string(B));
    const uint64_t seed = fresh_seed();
    pf::BatchSampler sampler(S, B, seed);
    const int per_epoch = S / B;
    std::vector<std::vector<int>> epochs;
    for (int e = 0; e < 4; ++e) {
      std::vector<int> seen;
      for (int k = 0; k < per_epoch; ++k) {
        std::vector<int> batch = sampler.next();
        ASSERT_EQ(static_cast<int>(batch.size()), B);
        EXPECT_EQ(sampler.epoch(), e);
        seen.insert(seen.end(), batch.begin(), batch.end());
      }
      std::set<int> unique(seen.begin(), seen.end());
      EXPECT_EQ(unique.size(), seen.size()) << "an index repeated within epoch " << e;
      EXPECT_EQ(static_cast<int>(seen.size()), per_epoch * B);
      for (int i : seen) ASSERT_TRUE(i >= 0 && i < S);
      epochs.push_back(seen);
    }
    if (S == B && S > 1) {
      // no partial batch: every index exactly once
      std::vector<int> sorted = epochs[0];
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i < S; ++i) EXPECT_EQ(sorted[i], i);
    }
    if (S >= 17) {
      EXPECT_NE(epochs[0], epochs[1]) << "each epoch is a fresh shuffle";
      EXPECT_NE(epochs[1], epochs[2]);
    }
    // resume from the middle of an epoch and from an epoch boundary
    for (int stop : {per_epoch + 1, 2 * per_epoch, 3}) {
      pf::BatchSampler a(S, B, seed);
      for (int k = 0; k < stop; ++k) a.next();
      pf::BatchSampler b(S, B, seed);
      b.set_state(a.epoch(), a.cursor());
      for (int k = 0; k < 2 * per_epoch + 3; ++k)
        ASSERT_EQ(a.next(), b.next()) << "stop " << stop << " k " << k;
    }
    // another seed, another order
    if (S >= 17) {
      pf::BatchSampler other(S, B, seed + 1);
      std::vector<int> first;
      for (int k = 0; k < per_epoch; ++k) {
        auto b = other.next();
        first.insert(first.end(), b.begin(), b.end());
      }
      EXPECT_NE(first, epochs[0]);
    }
  }
  expect_error([] { pf::BatchSampler(10, 11, 0); }, {"batch_size <= S = 10", "found batch_size = 11"});
  expect_error([] { pf::BatchSampler(10, 0, 0); }, {"found batch_size = 0"});
  expect_error([] { pf::BatchSampler(10, 3, 0).set_state(0, 11); }, {"cursor = 11"});
}

TEST_F(ChainTest, ShuffleIsUniform) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  // All 6 orders of 3 samples, each with frequency 1/6: over 1200 epochs the sd of a frequency
  // is sqrt(1/6 · 5/6 / 1200) = 0.011; bounds at ~5 sd.
  pf::BatchSampler sampler(3, 3, fresh_seed());
  std::map<std::vector<int>, int> count;
  const int epochs = 1200;
  for (int e = 0; e < epochs; ++e) ++count[sampler.next()];
  EXPECT_EQ(count.size(), 6u);
  for (const auto& [perm, n] : count) EXPECT_NEAR(n / double(epochs), 1.0 / 6.0, 0.055);
}

TEST_F(ChainTest, GatherBatchCopiesTheRequestedSamples) {
  const pf::ChainSet c = pf::generate_chains(17, 9, 8, fresh_seed(), "train");
  const std::vector<int> idx = {16, 0, 5, 5};
  const pf::Batch b = pf::gather_batch(c, idx);
  ASSERT_EQ(b.B, 4);
  ASSERT_EQ(b.N, 9);
  ASSERT_EQ(b.tokens.size(), 36u);
  ASSERT_EQ(b.coords.size(), 108u);
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 9; ++i) {
      EXPECT_EQ(b.tokens[k * 9 + i], c.tokens[idx[k] * 9 + i]);
      EXPECT_EQ(b.labels[k * 9 + i], c.labels[idx[k] * 9 + i]);
      for (int a = 0; a < 3; ++a)
        EXPECT_EQ(b.coords[(k * 9 + i) * 3 + a], c.coords[(idx[k] * 9 + i) * 3 + a]);
    }
  expect_error([&] { pf::gather_batch(c, {0, 17}); }, {"sample index 17 (position 1) is outside [0, 17)"});
  expect_error([&] { pf::gather_batch(c, {-1}); }, {"sample index -1"});
  expect_error([&] { pf::gather_batch(c, {}); }, {"at least one sample index"});
}

TEST(Chain, BadSizesAreErrors) {
  expect_error([] { pf::generate_chains(0, 9, 8, 1, "train"); }, {"at least 1 chain", "S = 0"});
  expect_error([] { pf::generate_chains(3, 5, 8, 1, "train"); }, {"at least 6 residues", "N = 5"});
  expect_error([] { pf::generate_chains(3, 9, 0, 1, "train"); }, {"n_types = 0"});
}

// ---- the relpos task ------------------------------------------------------------------------

TEST(Relpos, LabelRuleOnHandMadeSequences) {
  // K = 10 so that the sums are readable: label_i = (t_{i−1} + t_{i+2}) mod 10, 0 past the ends.
  const std::vector<int32_t> t = {1, 2, 3, 4, 5, 6, 7};
  std::vector<int32_t> labels(t.size(), -7);
  pf::relpos_labels(t.data(), 7, 10, labels.data());
  // i = 0: t_{-1} = 0, t_2 = 3 → 3;  i = 1: 1 + 4;  ...  i = 4: 4 + 7 = 11 → 1;
  // i = 5: t_4 + t_7 (past the end) = 5;  i = 6: t_5 + t_8 = 6.
  EXPECT_EQ(labels, (std::vector<int32_t>{3, 5, 7, 9, 1, 5, 6}));
  // Modulo with a small K and the largest types: (K−1) + (K−1) = 2K − 2 → K − 2.
  const std::vector<int32_t> u = {2, 2, 2, 2, 2, 2};
  std::vector<int32_t> lu(6, -7);
  pf::relpos_labels(u.data(), 6, 3, lu.data());
  EXPECT_EQ(lu, (std::vector<int32_t>{2, 1, 1, 1, 2, 2}));  // ends: 0+2, and 2+0 twice
  // The shortest sequences: every residue has at most one neighbour in range.
  const std::vector<int32_t> one = {4};
  std::vector<int32_t> l1(1, -7);
  pf::relpos_labels(one.data(), 1, 5, l1.data());
  EXPECT_EQ(l1[0], 0);  // both neighbours past the ends
  const std::vector<int32_t> two = {4, 3};
  std::vector<int32_t> l2(2, -7);
  pf::relpos_labels(two.data(), 2, 5, l2.data());
  EXPECT_EQ(l2, (std::vector<int32_t>{0, 4}));  // i = 1: t_0 = 4, t_3 past the end
  // K = 1: everything is type 0 and so is every label.
  std::vector<int32_t> zeros(8, 0), lz(8, -7);
  pf::relpos_labels(zeros.data(), 8, 1, lz.data());
  EXPECT_EQ(lz, zeros);
}

TEST_F(ChainTest, RelposTaskKeepsTheChainsAndRelabelsThem) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const uint64_t seed = fresh_seed();
  const pf::ChainSet chain = pf::generate_chains(17, 33, 8, seed, "train");
  const pf::ChainSet rel = pf::generate_chains(17, 33, 8, seed, "train", "relpos");
  EXPECT_EQ(rel.task, "relpos");
  EXPECT_EQ(chain.task, "chain");
  EXPECT_EQ(rel.tokens, chain.tokens) << "the same seed gives the same types for both tasks";
  EXPECT_EQ(rel.coords, chain.coords);
  EXPECT_NE(rel.labels, chain.labels);
  // The rule written out independently of relpos_labels.
  for (int s = 0; s < rel.S; ++s)
    for (int i = 0; i < rel.N; ++i) {
      auto type = [&](int j) { return j < 0 || j >= rel.N ? 0 : rel.tokens[s * rel.N + j]; };
      ASSERT_EQ(rel.labels[s * rel.N + i], (type(i - 1) + type(i + 2)) % 8) << "s " << s << " i " << i;
    }
  // The label frequencies of a sum mod K of two uniform types: uniform (labels at the ends excepted).
  const pf::ChainSet big = pf::generate_chains(512, 64, 8, seed, "val", "relpos");
  std::vector<int> count(8, 0);
  for (int s = 0; s < big.S; ++s)
    for (int i = 1; i + 2 < big.N; ++i) ++count[big.labels[s * big.N + i]];
  const double n = 512.0 * 61;
  // 31232 labels, each neighbour shared by two labels: sd of a frequency ≲ sqrt(2·0.11/31232) = 0.0027.
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(count[k] / n, 1.0 / 8, 0.02) << "label " << k;

  // The file records the task, and reads back to the same set.
  pf::write_chains(file("rel.h5"), rel);
  EXPECT_EQ(pf::H5Reader(file("rel.h5")).attr_string("/", "task"), "relpos");
  EXPECT_TRUE(same(pf::read_chains(file("rel.h5")), rel));
  EXPECT_EQ(pf::read_chains(file("rel.h5")).task, "relpos");
  pf::write_chains(file("chain.h5"), chain);
  EXPECT_EQ(pf::H5Reader(file("chain.h5")).attr_string("/", "task"), "chain");
}

TEST_F(ChainTest, EnsureAndReadCheckTheTask) {
  const uint64_t seed = fresh_seed();
  const std::string p = file("rel.h5");
  EXPECT_TRUE(pf::ensure_chains(p, 17, 9, 8, seed, "train", "relpos"));
  EXPECT_FALSE(pf::ensure_chains(p, 17, 9, 8, seed, "train", "relpos"));
  expect_error([&] { pf::ensure_chains(p, 17, 9, 8, seed, "train"); },
               {p, "task 'relpos' in the file, 'chain' requested", "Delete the file"});
  expect_error([&] { pf::ensure_chains(file("x.h5"), 17, 9, 8, seed, "train", "sum"); },
               {"expected task 'chain' or 'relpos', found 'sum'"});
  EXPECT_FALSE(fs::exists(file("x.h5")));
  expect_error([&] { pf::generate_chains(3, 9, 8, seed, "train", ""); }, {"found ''"});

  // A file without a task attribute (written before tasks existed) is a chain file.
  pf::ChainSet c = pf::generate_chains(5, 9, 4, seed, "train");
  auto write = [&](const std::string& name, const pf::ChainSet& v, const char* task) {
    pf::H5Writer w(file(name));
    w.write_dataset("tokens", v.tokens.data(), {v.S, v.N});
    w.write_dataset("coords", v.coords.data(), {v.S, v.N, 3});
    w.write_dataset("labels", v.labels.data(), {v.S, v.N});
    w.write_attr("/", "n_types", static_cast<int64_t>(v.n_types));
    w.write_attr("/", "seed", v.seed);
    w.write_attr("/", "format_version", int64_t{1});
    if (task) w.write_attr("/", "task", std::string(task));
    w.commit();
    return file(name);
  };
  EXPECT_EQ(pf::read_chains(write("old.h5", c, nullptr)).task, "chain");
  EXPECT_FALSE(pf::ensure_chains(file("old.h5"), 5, 9, 4, seed, "train"));
  expect_error([&] { pf::ensure_chains(file("old.h5"), 5, 9, 4, seed, "train", "relpos"); },
               {"task 'chain' in the file, 'relpos' requested"});
  // An unknown task, and relpos labels that do not follow the rule.
  std::string bad = write("unknown.h5", c, "nearest");
  expect_error([&] { pf::read_chains(bad); }, {bad, "expected task 'chain' or 'relpos', found 'nearest'"});
  pf::ChainSet r = pf::generate_chains(5, 9, 4, seed, "train", "relpos");
  EXPECT_EQ(pf::read_chains(write("rel_ok.h5", r, "relpos")).labels, r.labels);
  r.labels[2 * 9 + 8] = (r.labels[2 * 9 + 8] + 1) % 4;
  bad = write("rel_bad.h5", r, "relpos");
  expect_error([&] { pf::read_chains(bad); }, {bad, "labels[2, 8] = ", "but the relpos rule gives"});
  // chain labels under a relpos attribute are caught the same way
  bad = write("mislabelled.h5", c, "relpos");
  expect_error([&] { pf::read_chains(bad); }, {bad, "but the relpos rule gives"});
}

// ---- chains of variable length ----------------------------------------------------------------

namespace {

// The chain task's brute force on chain s of a set with lengths (its own n_s residues only).
std::vector<int32_t> brute_force_labels_varlen(const pf::ChainSet& c, int s) {
  const int n = c.length(s);
  pf::ChainSet one;
  one.S = 1, one.N = n, one.n_types = c.n_types;
  one.tokens.assign(c.tokens.begin() + static_cast<size_t>(s) * c.N,
                    c.tokens.begin() + static_cast<size_t>(s) * c.N + n);
  one.coords.assign(c.coords.begin() + static_cast<size_t>(s) * c.N * 3,
                    c.coords.begin() + static_cast<size_t>(s) * c.N * 3 + 3 * n);
  return brute_force_labels(one);
}

}  // namespace

TEST_F(ChainTest, VariableLengthsAreUniformSeededAndPadded) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const uint64_t seed = fresh_seed();
  const pf::ChainSpec spec{300, 6, 9, 5, seed, "train", "chain"};
  const pf::ChainSet c = pf::generate_chains(spec);
  ASSERT_EQ(c.N, 9);
  ASSERT_EQ(c.lengths.size(), 300u);
  EXPECT_FALSE(c.fixed_length());
  EXPECT_EQ(pf::chain_lengths(spec), c.lengths);
  std::vector<int> count(10, 0);
  for (int32_t n : c.lengths) {
    ASSERT_TRUE(n >= 6 && n <= 9) << n;
    ++count[n];
  }
  // 300 draws of 4 values: each ~75 ± 7.5 (sd); bounds at ~5 sd.
  for (int n = 6; n <= 9; ++n) EXPECT_NEAR(count[n], 75, 38) << "length " << n;
  for (int s = 0; s < c.S; ++s) {
    const int n = c.length(s);
    for (int i = n; i < c.N; ++i) {  // padding
      const size_t k = static_cast<size_t>(s) * c.N + i;
      ASSERT_EQ(c.tokens[k], 0);
      ASSERT_EQ(c.labels[k], 0);
      ASSERT_EQ(c.coords[3 * k], 0.0f);
      ASSERT_EQ(c.coords[3 * k + 2], 0.0f);
    }
    const std::vector<int32_t> labels(c.labels.begin() + s * c.N, c.labels.begin() + s * c.N + n);
    ASSERT_EQ(labels, brute_force_labels_varlen(c, s)) << "chain " << s << " of " << n;
  }
  // Deterministic, and the first samples do not depend on how many are generated.
  pf::ChainSpec more = spec;
  more.S = 517;
  const pf::ChainSet m = pf::generate_chains(more);
  EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), m.tokens.begin()));
  EXPECT_TRUE(std::equal(c.lengths.begin(), c.lengths.end(), m.lengths.begin()));
  EXPECT_TRUE(same(c, pf::generate_chains(spec)));
  // The relpos task labels each chain by its own length: t past n_s counts as 0.
  pf::ChainSpec rel = spec;
  rel.task = "relpos";
  const pf::ChainSet r = pf::generate_chains(rel);
  EXPECT_EQ(r.lengths, c.lengths);
  EXPECT_EQ(r.tokens, c.tokens);
  for (int s = 0; s < r.S; ++s) {
    const int n = r.length(s);
    auto type = [&](int j) { return j < 0 || j >= n ? 0 : r.tokens[s * r.N + j]; };
    for (int i = 0; i < n; ++i) ASSERT_EQ(r.labels[s * r.N + i], (type(i - 1) + type(i + 2)) % 5);
  }
  // A range of one length is the fixed-length set, draw for draw.
  const pf::ChainSet fixed = pf::generate_chains(pf::ChainSpec{17, 33, 33, 8, seed, "val", "chain"});
  EXPECT_TRUE(same(fixed, pf::generate_chains(17, 33, 8, seed, "val")));
  EXPECT_TRUE(fixed.fixed_length());
  EXPECT_EQ(fixed.lengths, std::vector<int32_t>(17, 33));

  expect_error(
      [&] {
        pf::generate_chains(pf::ChainSpec{3, 5, 9, 4, seed, "x", "chain"});
      },
      {"6 <= n_min <= n_max = 9", "n_min = 5"});
  expect_error([&] { pf::generate_chains(pf::ChainSpec{3, 10, 9, 4, seed, "x", "chain"}); }, {"n_min = 10"});
}

TEST_F(ChainTest, VariableLengthFilesRoundTripAndAreChecked) {
  const uint64_t seed = fresh_seed();
  const pf::ChainSpec spec{23, 7, 31, 6, seed, "train", "relpos"};
  const std::string p = file("v.h5");
  EXPECT_TRUE(pf::ensure_chains(p, spec));
  EXPECT_FALSE(pf::ensure_chains(p, spec));
  const pf::ChainSet c = pf::read_chains(p);
  EXPECT_TRUE(same(c, pf::generate_chains(spec)));
  EXPECT_EQ(c.lengths, pf::chain_lengths(spec));
  pf::H5Reader r(p);
  EXPECT_EQ(r.shape("lengths"), (std::vector<int64_t>{23}));
  EXPECT_EQ(r.shape("tokens"), (std::vector<int64_t>{23, 31}));
  // A fixed-length file has no lengths dataset (files are what they were before lengths).
  pf::write_chains(file("f.h5"), pf::generate_chains(5, 9, 4, seed, "train"));
  EXPECT_FALSE(pf::H5Reader(file("f.h5")).has("lengths"));
  EXPECT_EQ(pf::read_chains(file("f.h5")).lengths, std::vector<int32_t>(5, 9));

  pf::ChainSpec other = spec;
  other.n_min = 8;
  expect_error([&] { pf::ensure_chains(p, other); },
               {p, "chain lengths ", " in the file, lengths drawn from 8..31 requested", "Delete the file"});
  other = spec;
  other.n_max = 32;
  expect_error([&] { pf::ensure_chains(p, other); },
               {"longest chain (N = n_res_max) 31 in the file, 32 requested"});
  expect_error([&] { pf::ensure_chains(p, 23, 31, 6, seed, "train", "relpos"); },
               {"chain lengths", "lengths drawn from 31..31 requested"});

  // Corrupt lengths and padding.
  auto variant = [&](const std::string& name, const std::function<void(pf::ChainSet&)>& edit) {
    pf::ChainSet v = c;
    edit(v);
    pf::H5Writer w(file(name));
    w.write_dataset("tokens", v.tokens.data(), {v.S, v.N});
    w.write_dataset("coords", v.coords.data(), {v.S, v.N, 3});
    w.write_dataset("labels", v.labels.data(), {v.S, v.N});
    w.write_dataset("lengths", v.lengths.data(), {static_cast<int64_t>(v.lengths.size())});
    w.write_attr("/", "n_types", static_cast<int64_t>(v.n_types));
    w.write_attr("/", "seed", v.seed);
    w.write_attr("/", "format_version", int64_t{1});
    w.commit();
    return file(name);
  };
  std::string bad = variant("short.h5", [](pf::ChainSet& v) { v.lengths[4] = 5; });
  expect_error([&] { pf::read_chains(bad); }, {bad, "lengths[4] = 5 is outside [6, 31]"});
  bad = variant("long.h5", [](pf::ChainSet& v) { v.lengths[0] = 32; });
  expect_error([&] { pf::read_chains(bad); }, {bad, "lengths[0] = 32 is outside [6, 31]"});
  bad = variant("count.h5", [](pf::ChainSet& v) { v.lengths.pop_back(); });
  expect_error([&] { pf::read_chains(bad); }, {bad, "'lengths'", "expected shape [23], found [22]"});
  int s_short = 0;
  while (c.lengths[s_short] == c.N) ++s_short;
  bad = variant("pad.h5", [&](pf::ChainSet& v) { v.tokens[s_short * v.N + v.N - 1] = 1; });
  expect_error([&] { pf::read_chains(bad); }, {bad, "chain " + std::to_string(s_short), "not zero padding"});
}

TEST_F(ChainTest, TokenBatchesCoverEverySequenceOncePerEpochAndResumeExactly) {
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (auto [S, lo, hi, budget] :
       {std::tuple{97, 6, 40, 100}, std::tuple{50, 6, 6, 6}, std::tuple{1, 9, 9, 9},
        std::tuple{64, 10, 64, 64}, std::tuple{33, 6, 30, 1000}}) {
    SCOPED_TRACE("S " + std::to_string(S) + " budget " + std::to_string(budget));
    const uint64_t seed = fresh_seed();
    const std::vector<int32_t> lengths =
        pf::chain_lengths(pf::ChainSpec{S, lo, hi, 4, seed, "train", "chain"});
    pf::BatchSampler sampler(lengths, budget, seed);
    EXPECT_EQ(sampler.batch_tokens(), budget);
    std::vector<std::vector<int>> epochs;
    std::vector<std::pair<int64_t, int64_t>> states;  // after each batch
    for (int e = 0; e < 3; ++e) {
      std::vector<int> seen;
      while (static_cast<int>(seen.size()) < S) {
        const std::vector<int> batch = sampler.next();
        ASSERT_FALSE(batch.empty());
        EXPECT_EQ(sampler.epoch(), e);
        int64_t used = 0;
        for (int i : batch) used += lengths[i];
        EXPECT_LE(used, budget);
        // Full: the next sample of the epoch would not have fit (unless the epoch is done).
        seen.insert(seen.end(), batch.begin(), batch.end());
        states.emplace_back(sampler.epoch(), sampler.cursor());
        if (static_cast<int>(seen.size()) < S) {
          const std::vector<int> peek = [&, budget = budget] {  // (clang: a structured binding
            pf::BatchSampler copy(lengths, budget, seed);       // is captured by name)
            copy.set_state(sampler.epoch(), sampler.cursor());
            return copy.next();
          }();
          EXPECT_GT(used + lengths[peek[0]], budget) << "a batch must take every sample that fits";
        }
      }
      ASSERT_EQ(static_cast<int>(seen.size()), S) << "an epoch covers every sample once";
      std::vector<int> sorted = seen;
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i < S; ++i) ASSERT_EQ(sorted[i], i);
      epochs.push_back(seen);
    }
    if (S >= 17) EXPECT_NE(epochs[0], epochs[1]) << "each epoch is a fresh shuffle";
    // Resume after any batch: the same batches follow.
    for (size_t at : {size_t{0}, states.size() / 2, states.size() - 1}) {
      pf::BatchSampler a(lengths, budget, seed);
      for (size_t k = 0; k <= at; ++k) a.next();
      pf::BatchSampler b(lengths, budget, seed);
      b.set_state(a.epoch(), a.cursor());
      for (int k = 0; k < 20; ++k) ASSERT_EQ(a.next(), b.next()) << "at " << at << " k " << k;
    }
  }
  expect_error(
      [] {
        pf::BatchSampler(std::vector<int32_t>{6, 12, 7}, 11, 0);
      },
      {"fit in batch_tokens = 11", "found length 12 (sample 1)"});
  expect_error([] { pf::BatchSampler(std::vector<int32_t>{}, 11, 0); }, {"at least 1 sample"});
  expect_error([] { pf::BatchSampler(std::vector<int32_t>{6}, 0, 0); }, {"batch_tokens >= 1"});
}

TEST_F(ChainTest, GatherPackedConcatenatesWithoutPadding) {
  const pf::ChainSet c = pf::generate_chains(pf::ChainSpec{17, 6, 20, 8, fresh_seed(), "train", "chain"});
  const std::vector<int> idx = {16, 0, 5, 5};
  const pf::PackedBatch b = pf::gather_packed(c, idx);
  ASSERT_EQ(b.B, 4);
  ASSERT_EQ(b.cu_seqlens.size(), 5u);
  EXPECT_EQ(b.cu_seqlens[0], 0);
  for (int k = 0; k < 4; ++k) {
    const int s = idx[k], n = c.length(s), at = b.cu_seqlens[k];
    ASSERT_EQ(b.cu_seqlens[k + 1] - at, n);
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(b.tokens[at + i], c.tokens[s * c.N + i]);
      EXPECT_EQ(b.labels[at + i], c.labels[s * c.N + i]);
      for (int a = 0; a < 3; ++a) EXPECT_EQ(b.coords[3 * (at + i) + a], c.coords[3 * (s * c.N + i) + a]);
    }
  }
  EXPECT_EQ(b.T(), static_cast<int64_t>(b.tokens.size()));
  EXPECT_EQ(b.coords.size(), 3 * b.tokens.size());
  expect_error([&] { pf::gather_packed(c, {0, 17}); }, {"sample index 17 (position 1) is outside [0, 17)"});
  expect_error([&] { pf::gather_packed(c, {}); }, {"at least one sample index"});
  // The dense batch refuses a chain shorter than its row (it would train on the padding).
  int s_short = 0;
  while (c.lengths[s_short] == c.N) ++s_short;
  expect_error([&] { pf::gather_batch(c, {s_short}); },
               {"residues; batches of chains of different lengths are packed"});
}
