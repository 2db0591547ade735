// The example's yardstick: out = softmax(scale · q kᵀ + bias) v for one (b, h), in double,
// straight from the definition. q (Nq,D), k and v (Nk,D), bias (Nq,Nk), all row-major.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

inline std::vector<double> naive_attention(const double* q, const double* k, const double* v,
                                           const double* bias, int Nq, int Nk, int D, double scale) {
  std::vector<double> out(size_t(Nq) * D, 0.0), s(Nk);
  for (int i = 0; i < Nq; ++i) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < Nk; ++j) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += q[i * D + d] * k[j * D + d];
      s[j] = scale * dot + bias[i * Nk + j];
      mx = std::max(mx, s[j]);
    }
    for (int j = 0; j < Nk; ++j) sum += s[j] = std::exp(s[j] - mx);
    for (int j = 0; j < Nk; ++j)
      for (int d = 0; d < D; ++d) out[i * D + d] += s[j] / sum * v[j * D + d];
  }
  return out;
}

// Deterministic values in [-1, 1) (the example needs no random library).
inline std::vector<double> example_values(size_t n, unsigned seed) {
  std::vector<double> x(n);
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (seed >> 8) / double(1u << 23) - 1.0;
  }
  return x;
}
