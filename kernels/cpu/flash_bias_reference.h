// The plain flash-bias forward and backward: every score matrix materialised, one loop per
// formula, float64 throughout. Read it beside the tiled kernels (kernels/cpu/flash_bias.cpp,
// kernels/cuda/flash_bias*): they compute the same thing without ever holding an (Nq, Nk) matrix.
// The tests check both tiled kernels against it.
//
// Forward, per batch b and head h (contiguous layouts, no strides):
//   S = scale · Q Kᵀ + bias + Brel + mask       Brel[i,j] = T[h, clip(j − i, −R, R) + R]
//   P = softmax_rows(S),  lse_i = log Σ_j exp S_ij,  O = P V
// mask is −∞ at padded keys and, when causal, at j > i + (Nk − Nq) (bottom-right aligned); a row
// with every key masked has P = 0, O = 0 and lse = −∞.
//
// Backward, with Δ_i = Σ_j P_ij dP_ij = rowsum(dO ∘ O):
//   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − Δ),  dQ = scale · dS K,  dK = scale · dSᵀ Q
//   dbias = dS summed over the axes the bias broadcasts over (batch, head or both)
//   dT[h, r] = Σ of dS over every (b, i, j) whose bin is r (dS summed over the clipped diagonals)
#pragma once
#include <cstdint>
#include <vector>

namespace pf::kernels::cpu {

struct FlashBiasReferenceInputs {
  int B = 1, H = 1, Nq = 1, Nk = 1, D = 1;
  double scale = 1;
  bool causal = false;
  std::vector<double> q, dout;  // (B,Nq,H,D)
  std::vector<double> k, v;     // (B,Nk,H,D)
  // Dense bias (Bb,Hb,Nq,Nk), Bb = B or 1 and Hb = H or 1 as bias_per_batch / bias_per_head say;
  // empty: none.
  std::vector<double> bias;
  bool bias_per_batch = false, bias_per_head = false;
  std::vector<uint8_t> mask;  // key padding (B,Nk), nonzero = padded; empty: none
  int relpos_clip = -1;       // R of the relative-position table; -1: none
  std::vector<double> table;  // (H, 2R+1)
};

struct FlashBiasReferenceOutputs {
  std::vector<double> out;                        // (B,Nq,H,D)
  std::vector<double> lse;                        // (B,H,Nq)
  std::vector<double> dq, dk, dv, dbias, dtable;  // the shapes of q, k, v, bias, table
  std::vector<double> dtable_abs;  // Σ |dS| per bin: the scale dT's rounding errors are relative to
};

FlashBiasReferenceOutputs flash_bias_reference(const FlashBiasReferenceInputs& in);

}  // namespace pf::kernels::cpu
