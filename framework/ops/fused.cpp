// Fused ops: one op where a chain of ops would make several passes over a large tensor.
// set_fused(op, false) makes an op run the chain it replaces (the unfused reference).
//
// pair_bias = permute(linear(layernorm(z, γ, β), W), (0,3,1,2)) in one pass over z, with its
// backward in one more (kernels/cpu/fused.h derives it). The chain keeps the normalised copy of
// z for the projection's dW and moves z's size through memory seven times in the forward and
// backward together; the fused op keeps only z (its saved input) and reads it twice. Its
// backward adds dz into the gradient sum of z that autograd holds (make_result_into), so the
// layers that read one z leave one buffer, not one per layer plus their sums.
//
// embedding_sum = cast(embedding(a, ia)) + cast(embedding(b, ib)) (ib broadcast over ia's
// leading dims) in one pass that writes the sum once in the activations' dtype: the chain writes
// both lookups in the tables' dtype (fp32), converts each and adds them, and its backward
// converts the gradient back to fp32 and sums the broadcast one over the batch first.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>

#include "framework/ops/common.h"
#include "framework/profile.h"
#include "kernels/cpu/fused.h"
#ifdef PF_WITH_CUDA
#include "kernels/cuda/fused.h"
#endif

namespace pf::ops {

using namespace detail;

namespace {
std::atomic<bool> g_fuse_pair_bias{true}, g_fuse_embedding_sum{true};

std::atomic<bool>& switch_of(const char* op) {
  if (std::strcmp(op, "pair_bias") == 0) return g_fuse_pair_bias;
  if (std::strcmp(op, "embedding_sum") == 0) return g_fuse_embedding_sum;
  PF_FAIL("set_fused: no fused op named '" << op << "' (pair_bias, embedding_sum)");
}

// Where the GPU kernel does not take a size, the op runs its chain (the same result) and says
// so once (note_once).
std::atomic<bool> g_said_pair_bias{false}, g_said_embedding_sum{false};

// The chain the fused op replaces (the reference for benchmarks). In bf16 the projection uses a
// bf16 copy of an fp32 W, as nn::Linear does.
Tensor pair_bias_chain(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& w,
                       double eps) {
  const Tensor n = layernorm(z, gamma, beta, eps);
  const Tensor wz = w.dtype() == z.dtype() ? w : cast(w, z.dtype());
  return permute(linear(n, wz, Tensor()), {0, 3, 1, 2});
}

// ---- the kernels of the tensors' device -------------------------------------------------------

// The sizes of one pair_bias call.  z:(B,N,M,C) w:(H,C)
struct PairBiasDims {
  int64_t B, N, M, C, H;
};

// CPU: z and the parameters of one dtype, float32 or float64. CUDA: z float32 or bfloat16, the
// parameters float32 or z's dtype.
void launch_pair_bias_forward(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& w,
                              Tensor& out, const PairBiasDims& d, double eps) {
#ifdef PF_WITH_CUDA
  if (z.device() == Device::CUDA) {
    kernels::cuda::pair_bias_forward(scalar_type_of(z.dtype()), scalar_type_of(w.dtype()), z.data_ptr(),
                                     gamma.data_ptr(), beta.data_ptr(), w.data_ptr(), out.data_ptr(), d.B,
                                     d.N, d.M, static_cast<int>(d.C), static_cast<int>(d.H), eps);
    return;
  }
#endif
  dispatch_float(z.dtype(), "pair_bias", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::pair_bias_forward(z.data<T>(), gamma.data<T>(), beta.data<T>(), w.data<T>(), out.data<T>(),
                                    d.B, d.N, d.M, d.C, d.H, eps);
  });
}

// dz, dgamma, dbeta, dw: each undefined when not wanted; accumulate_dz: dz += instead of =.
void launch_pair_bias_backward(const Tensor& g, const Tensor& z, const Tensor& gamma, const Tensor& beta,
                               const Tensor& w, Tensor& dz, Tensor& dgamma, Tensor& dbeta, Tensor& dw,
                               const PairBiasDims& d, double eps, bool accumulate_dz) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    auto ptr = [](Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
    Tensor ws = Tensor::empty({static_cast<int64_t>(kernels::cuda::pair_bias_backward_workspace_bytes(
                                  d.B, d.N, d.M, static_cast<int>(d.C), static_cast<int>(d.H)))},
                              DType::U8, g.device());
    kernels::cuda::pair_bias_backward(scalar_type_of(z.dtype()), scalar_type_of(w.dtype()), g.data_ptr(),
                                      z.data_ptr(), gamma.data_ptr(), beta.data_ptr(), w.data_ptr(), ptr(dz),
                                      ptr(dgamma), ptr(dbeta), ptr(dw), d.B, d.N, d.M, static_cast<int>(d.C),
                                      static_cast<int>(d.H), eps, accumulate_dz, ws.data_ptr());
    return;
  }
#endif
  dispatch_float(g.dtype(), "pair_bias", [&](auto t) {
    using T = decltype(t);
    auto p = [](Tensor& x) { return x.defined() ? x.data<T>() : nullptr; };
    kernels::cpu::pair_bias_backward(g.data<T>(), z.data<T>(), gamma.data<T>(), beta.data<T>(), w.data<T>(),
                                     p(dz), p(dgamma), p(dbeta), p(dw), d.B, d.N, d.M, d.C, d.H, eps,
                                     accumulate_dz);
  });
}

// The sizes of pair_bias(z, γ, β, w) after checking its arguments (`op` names the caller).
PairBiasDims check_pair_bias(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& w,
                             double eps, const char* op) {
  check_float(z, op, "z");
  check_float(gamma, op, "gamma");
  check_float(beta, op, "beta");
  check_float(w, op, "w");
  check_same(gamma, "gamma", beta, "beta", op);
  check_same(gamma, "gamma", w, "w", op);
  if (z.device() == Device::CUDA && gamma.dtype() == DType::F32)  // fp32 parameters, any z
    PF_CHECK(gamma.device() == z.device(), op << ": z and the parameters must be on the same device, got "
                                              << z.str() << " and " << gamma.str());
  else
    check_same(z, "z", gamma, "gamma", op);
  PF_CHECK(z.ndim() == 4, op << ": z must be (B,N,M,C), got " << z.str());
  const int64_t B = z.size(0), N = z.size(1), M = z.size(2), C = z.size(3);
  PF_CHECK(C >= 1, op << ": z " << z.str() << " has no channels");
  PF_CHECK(gamma.shape() == Shape{C} && beta.shape() == Shape{C},
           op << ": gamma and beta must be (" << C << ") to match z " << shape_str(z.shape()) << ", got "
              << gamma.str() << " and " << beta.str());
  PF_CHECK(w.ndim() == 2 && w.size(1) == C && w.size(0) >= 1,
           op << ": w must be (H," << C << ") to match z " << shape_str(z.shape()) << ", got " << w.str());
  PF_CHECK(eps >= 0, op << ": eps must be >= 0, got " << eps);
  return {B, N, M, C, w.size(0)};
}

// The layers of pair_bias_layers: γ_l, β_l, w_l of one dtype and device, one H.
struct PairBiasLayers {
  const std::vector<Tensor>& gammas;
  const std::vector<Tensor>& betas;
  const std::vector<Tensor>& ws;
  int64_t L() const { return static_cast<int64_t>(ws.size()); }
};

#ifdef PF_WITH_CUDA
kernels::cuda::PairBiasLayerParams layer_params(const PairBiasLayers& p) {
  kernels::cuda::PairBiasLayerParams k;
  k.L = static_cast<int>(p.L());
  for (int64_t l = 0; l < p.L(); ++l) {
    k.gamma[l] = p.gammas[l].data_ptr();
    k.beta[l] = p.betas[l].data_ptr();
    k.w[l] = p.ws[l].data_ptr();
  }
  return k;
}

// Whether the single-layer CUDA kernels (pair_bias) take these sizes.
bool pair_bias_kernels_fit(const PairBiasDims& d) {
  return d.C <= INT32_MAX && d.H <= INT32_MAX &&
         kernels::cuda::pair_bias_fits(static_cast<int>(d.C), static_cast<int>(d.H));
}

// Whether the one-pass CUDA kernels take these sizes (else each layer's own kernels run, inside
// the same op: same result, same gradients).
bool pair_bias_layers_one_pass(const Tensor& z, const PairBiasDims& d, int64_t L) {
  return z.device() == Device::CUDA && d.C <= INT32_MAX && d.H * L <= INT32_MAX &&
         reinterpret_cast<uintptr_t>(z.data_ptr()) % 16 == 0 &&
         kernels::cuda::pair_bias_layers_fits(scalar_type_of(z.dtype()), static_cast<int>(d.C),
                                              static_cast<int>(d.H), static_cast<int>(L));
}

Tensor pair_bias_layers_workspace(const Tensor& z) {
  return Tensor::empty({static_cast<int64_t>(kernels::cuda::pair_bias_layers_workspace_bytes(
                           scalar_type_of(z.dtype()), static_cast<int>(z.size(3))))},
                       DType::U8, z.device());
}
#endif

// out:(L,B,H,N,M): CUDA one pass (kernels/cuda/fused.h) where it takes the sizes, else (and on
// the CPU) the single layer's kernel per layer.
void launch_pair_bias_layers_forward(const Tensor& z, const PairBiasLayers& p, Tensor& out,
                                     const PairBiasDims& d, double eps) {
#ifdef PF_WITH_CUDA
  if (pair_bias_layers_one_pass(z, d, p.L())) {
    Tensor ws = pair_bias_layers_workspace(z);
    kernels::cuda::pair_bias_layers_forward(scalar_type_of(z.dtype()), scalar_type_of(p.ws[0].dtype()),
                                            z.data_ptr(), layer_params(p), out.data_ptr(), d.B, d.N, d.M,
                                            static_cast<int>(d.C), static_cast<int>(d.H), eps, ws.data_ptr());
    return;
  }
#endif
  for (int64_t l = 0; l < p.L(); ++l) {
    Tensor out_l = out.select(l);
    launch_pair_bias_forward(z, p.gammas[l], p.betas[l], p.ws[l], out_l, d, eps);
  }
}

// g:(L,B,H,N,M) → dz (undefined: not wanted; add_dz: +=) and the layers' gradients (entries
// undefined where not wanted).
void launch_pair_bias_layers_backward(const Tensor& g, const Tensor& z, const PairBiasLayers& p, Tensor& dz,
                                      std::vector<Tensor>& dgammas, std::vector<Tensor>& dbetas,
                                      std::vector<Tensor>& dws, const PairBiasDims& d, double eps,
                                      bool add_dz) {
#ifdef PF_WITH_CUDA
  if (pair_bias_layers_one_pass(z, d, p.L())) {
    kernels::cuda::PairBiasLayerGrads k;
    auto ptr = [](Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
    for (int64_t l = 0; l < p.L(); ++l) {
      k.gamma[l] = ptr(dgammas[l]);
      k.beta[l] = ptr(dbetas[l]);
      k.w[l] = ptr(dws[l]);
    }
    Tensor ws = pair_bias_layers_workspace(z);
    kernels::cuda::pair_bias_layers_backward(scalar_type_of(z.dtype()), scalar_type_of(p.ws[0].dtype()),
                                             g.data_ptr(), z.data_ptr(), layer_params(p), k, ptr(dz), d.B,
                                             d.N, d.M, static_cast<int>(d.C), static_cast<int>(d.H), eps,
                                             add_dz, ws.data_ptr());
    return;
  }
#endif
  for (int64_t l = 0; l < p.L(); ++l)  // the layers' dz summed in layer order
    launch_pair_bias_backward(g.select(l), z, p.gammas[l], p.betas[l], p.ws[l], dz, dgammas[l], dbetas[l],
                              dws[l], d, eps, add_dz || l > 0);
}

// The sizes of one embedding_sum call.  a:(Va,D) b:(Vb,D), rows = ia.numel(), S = ib.numel()
struct EmbeddingSumDims {
  int64_t Va, Vb, D, rows, S;
};

// CPU: the output in the tables' dtype, float32 or float64. CUDA: float32 or bfloat16 tables,
// the output float32 or bfloat16.
void launch_embedding_sum_forward(const Tensor& a, const Tensor& ia, const Tensor& b, const Tensor& ib,
                                  Tensor& out, const EmbeddingSumDims& d) {
#ifdef PF_WITH_CUDA
  if (a.device() == Device::CUDA) {
    kernels::cuda::embedding_sum_forward(
        scalar_type_of(a.dtype()), scalar_type_of(out.dtype()), a.data_ptr(),
        static_cast<const int32_t*>(ia.data_ptr()), b.data_ptr(), static_cast<const int32_t*>(ib.data_ptr()),
        out.data_ptr(), d.rows, d.S, static_cast<int>(d.D), static_cast<int>(d.Va), static_cast<int>(d.Vb));
    return;
  }
#endif
  dispatch_float(a.dtype(), "embedding_sum", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::embedding_sum_forward(a.data<T>(), ia.data<int32_t>(), b.data<T>(), ib.data<int32_t>(),
                                        out.data<T>(), d.rows, d.S, d.D, d.Va, d.Vb);
  });
}

// da, db: each undefined when not wanted.
void launch_embedding_sum_backward(const Tensor& g, const Tensor& ia, const Tensor& ib, Tensor& da,
                                   Tensor& db, DType table_dtype, const EmbeddingSumDims& d) {
#ifdef PF_WITH_CUDA
  if (g.device() == Device::CUDA) {
    Tensor ws =
        Tensor::empty({static_cast<int64_t>(kernels::cuda::embedding_sum_backward_workspace_bytes(
                          d.rows, static_cast<int>(d.D), static_cast<int>(d.Va), static_cast<int>(d.Vb)))},
                      DType::U8, g.device());
    kernels::cuda::embedding_sum_backward(
        scalar_type_of(g.dtype()), scalar_type_of(table_dtype), g.data_ptr(),
        static_cast<const int32_t*>(ia.data_ptr()), static_cast<const int32_t*>(ib.data_ptr()),
        da.defined() ? da.data_ptr() : nullptr, db.defined() ? db.data_ptr() : nullptr, d.rows, d.S,
        static_cast<int>(d.D), static_cast<int>(d.Va), static_cast<int>(d.Vb), ws.data_ptr());
    return;
  }
#endif
  (void)table_dtype;
  dispatch_float(g.dtype(), "embedding_sum", [&](auto t) {
    using T = decltype(t);
    kernels::cpu::embedding_sum_backward(g.data<T>(), ia.data<int32_t>(), ib.data<int32_t>(),
                                         da.defined() ? da.data<T>() : nullptr,
                                         db.defined() ? db.data<T>() : nullptr, d.rows, d.S, d.D, d.Va, d.Vb);
  });
}

}  // namespace

void set_fused(const char* op, bool on) { switch_of(op).store(on, std::memory_order_relaxed); }
bool fused(const char* op) { return switch_of(op).load(std::memory_order_relaxed); }

// z:(B,N,M,C) γ,β:(C) w:(H,C) → (B,H,N,M)
Tensor pair_bias(const Tensor& z, const Tensor& gamma, const Tensor& beta, const Tensor& w, double eps) {
  const profile::Scope ps("pair_bias");
  const PairBiasDims d = check_pair_bias(z, gamma, beta, w, eps, "pair_bias");
  const int64_t B = d.B, N = d.N, M = d.M, C = d.C;
  if (!g_fuse_pair_bias.load(std::memory_order_relaxed)) return pair_bias_chain(z, gamma, beta, w, eps);
#ifdef PF_WITH_CUDA
  if (z.device() == Device::CUDA && !pair_bias_kernels_fit(d)) {
    note_once(g_said_pair_bias,
              "pair_bias: the CUDA kernels do not take C = " + std::to_string(C) +
                  " channels with H = " + std::to_string(d.H) +
                  " heads (shared memory); running the unfused chain (layernorm, linear, permute)");
    return pair_bias_chain(z, gamma, beta, w, eps);
  }
#endif
  Tensor out = Tensor::empty({B, d.H, N, M}, z.dtype(), z.device());
  launch_pair_bias_forward(z, gamma, beta, w, out, d, eps);
  const bool need_z = z.requires_grad(), need_g = gamma.requires_grad(), need_b = beta.requires_grad(),
             need_w = w.requires_grad();
  const Tensor sz = z.detach(), sg = gamma.detach(), sb = beta.detach(), sw = w.detach();
  // z's gradient is added into the sum autograd holds for z when it has one (z read by every
  // layer: one pass over dz per layer instead of two); else written to a fresh tensor.
  return make_result_into(
      out, "pair_bias", {z, gamma, beta, w},
      profile::timed([=](const Tensor& g, const std::vector<Tensor>& into) -> std::vector<Tensor> {
        const bool add_dz = need_z && into[0].defined();
        Tensor dz = add_dz ? into[0] : need_z ? Tensor::empty(sz.shape(), sz.dtype(), g.device()) : Tensor();
        Tensor dg = need_g ? Tensor::empty({C}, sg.dtype(), g.device()) : Tensor();
        Tensor db = need_b ? Tensor::empty({C}, sg.dtype(), g.device()) : Tensor();
        Tensor dw = need_w ? Tensor::empty(sw.shape(), sw.dtype(), g.device()) : Tensor();
        launch_pair_bias_backward(g, sz, sg, sb, sw, dz, dg, db, dw, d, eps, add_dz);
        return {dz, dg, db, dw};
      }));
}

// z:(B,N,M,C) γ_l,β_l:(C) w_l:(H,C), l < L → L tensors (B,H,N,M): views of one (L,B,H,N,M) result
std::vector<Tensor> pair_bias_layers(const Tensor& z, const std::vector<Tensor>& gammas,
                                     const std::vector<Tensor>& betas, const std::vector<Tensor>& ws,
                                     double eps) {
  const profile::Scope ps("pair_bias");
  PF_CHECK(!ws.empty() && gammas.size() == ws.size() && betas.size() == ws.size(),
           "pair_bias_layers: one gamma, beta and w per layer expected, got "
               << gammas.size() << ", " << betas.size() << " and " << ws.size());
  const PairBiasDims d = check_pair_bias(z, gammas[0], betas[0], ws[0], eps, "pair_bias_layers");
  for (size_t l = 1; l < ws.size(); ++l) {
    check_pair_bias(z, gammas[l], betas[l], ws[l], eps, "pair_bias_layers");
    check_same(ws[0], "the first layer's w", ws[l], "another layer's w", "pair_bias_layers");
    PF_CHECK(ws[l].shape() == ws[0].shape(), "pair_bias_layers: every layer's w must be "
                                                 << shape_str(ws[0].shape()) << ", layer " << l << " has "
                                                 << ws[l].str());
  }
  const int64_t L = static_cast<int64_t>(ws.size());
  bool per_layer_ops = !g_fuse_pair_bias.load(std::memory_order_relaxed);  // the chains
#ifdef PF_WITH_CUDA
  // sizes that neither the one-pass nor the single-layer kernels take: pair_bias's own fallback
  per_layer_ops = per_layer_ops || (z.device() == Device::CUDA && !pair_bias_layers_one_pass(z, d, L) &&
                                    !pair_bias_kernels_fit(d));
#endif
  if (per_layer_ops) {
    std::vector<Tensor> out;
    for (int64_t l = 0; l < L; ++l) out.push_back(pair_bias(z, gammas[l], betas[l], ws[l], eps));
    return out;
  }
  Tensor out = Tensor::empty({L, d.B, d.H, d.N, d.M}, z.dtype(), z.device());
  launch_pair_bias_layers_forward(z, PairBiasLayers{gammas, betas, ws}, out, d, eps);
  std::vector<Tensor> inputs{z};
  inputs.insert(inputs.end(), gammas.begin(), gammas.end());
  inputs.insert(inputs.end(), betas.begin(), betas.end());
  inputs.insert(inputs.end(), ws.begin(), ws.end());
  const bool need_z = z.requires_grad();
  std::vector<bool> need(inputs.size());
  std::vector<Tensor> saved;
  for (size_t i = 0; i < inputs.size(); ++i) {
    need[i] = inputs[i].requires_grad();
    saved.push_back(inputs[i].detach());
  }
  // z's gradient is added into the sum autograd holds for z when it has one, as pair_bias does
  const Tensor stacked = make_result_into(
      out, "pair_bias", inputs,
      profile::timed([=](const Tensor& g, const std::vector<Tensor>& into) -> std::vector<Tensor> {
        const Tensor& sz = saved[0];
        const std::vector<Tensor> sg(saved.begin() + 1, saved.begin() + 1 + L),
            sb(saved.begin() + 1 + L, saved.begin() + 1 + 2 * L), sw(saved.begin() + 1 + 2 * L, saved.end());
        const bool add_dz = need_z && into[0].defined();
        Tensor dz = add_dz ? into[0] : need_z ? Tensor::empty(sz.shape(), sz.dtype(), g.device()) : Tensor();
        std::vector<Tensor> dg(L), db(L), dw(L);
        for (int64_t l = 0; l < L; ++l) {
          if (need[1 + l]) dg[l] = Tensor::empty({d.C}, sg[l].dtype(), g.device());
          if (need[1 + L + l]) db[l] = Tensor::empty({d.C}, sb[l].dtype(), g.device());
          if (need[1 + 2 * L + l]) dw[l] = Tensor::empty(sw[l].shape(), sw[l].dtype(), g.device());
        }
        launch_pair_bias_layers_backward(g, sz, PairBiasLayers{sg, sb, sw}, dz, dg, db, dw, d, eps, add_dz);
        std::vector<Tensor> grads{dz};
        grads.insert(grads.end(), dg.begin(), dg.end());
        grads.insert(grads.end(), db.begin(), db.end());
        grads.insert(grads.end(), dw.begin(), dw.end());
        return grads;
      }));
  return unbind(stacked);
}

// a:(Va,D) ia:(...,S...) I32 b:(Vb,D) ib:(S...) I32 → (...,S...,D) of out_dtype
Tensor embedding_sum(const Tensor& a, const Tensor& ia, const Tensor& b, const Tensor& ib, DType out_dtype) {
  const profile::Scope ps("embedding");
  check_float(a, "embedding_sum", "a");
  check_float(b, "embedding_sum", "b");
  check_same(a, "a", b, "b", "embedding_sum");
  check_defined(ia, "embedding_sum", "ia");
  check_defined(ib, "embedding_sum", "ib");
  PF_CHECK(ia.dtype() == DType::I32 && ib.dtype() == DType::I32,
           "embedding_sum: ia and ib must be int32, got " << ia.str() << " and " << ib.str());
  PF_CHECK(ia.device() == a.device() && ib.device() == a.device(),
           "embedding_sum: tables and indices must be on one device, got " << a.str() << ", " << ia.str()
                                                                           << ", " << ib.str());
  PF_CHECK(
      a.ndim() == 2 && b.ndim() == 2 && a.size(1) == b.size(1),
      "embedding_sum: a and b must be (Va,D) and (Vb,D) with one D, got " << a.str() << " and " << b.str());
  PF_CHECK(ib.ndim() <= ia.ndim() &&
               std::equal(ib.shape().begin(), ib.shape().end(), ia.shape().end() - ib.ndim()),
           "embedding_sum: ib's dims must be the trailing dims of ia's, got ia "
               << shape_str(ia.shape()) << " and ib " << shape_str(ib.shape()));
  PF_CHECK(is_floating(out_dtype),
           "embedding_sum: the output dtype must be floating, got " << dtype_name(out_dtype));
  auto chain = [&] { return add(cast(embedding(a, ia), out_dtype), cast(embedding(b, ib), out_dtype)); };
  if (!g_fuse_embedding_sum.load(std::memory_order_relaxed)) return chain();
  const EmbeddingSumDims d{a.size(0), b.size(0), a.size(1), ia.numel(), ib.numel()};
#ifdef PF_WITH_CUDA
  if (a.device() == Device::CUDA &&
      (d.D > INT32_MAX || d.Va > INT32_MAX || d.Vb > INT32_MAX ||
       !kernels::cuda::embedding_sum_fits(static_cast<int>(d.D), static_cast<int>(d.Va),
                                          static_cast<int>(d.Vb)))) {
    note_once(g_said_embedding_sum, "embedding_sum: the CUDA kernel does not take tables of " +
                                        std::to_string(d.Va) + " + " + std::to_string(d.Vb) +
                                        " rows of width " + std::to_string(d.D) +
                                        "; running the unfused chain (embedding, cast, add)");
    return chain();
  }
#endif
  if (a.device() == Device::CUDA)
    PF_CHECK(out_dtype == DType::F32 || out_dtype == DType::BF16,
             "embedding_sum: the output dtype on the GPU must be float32 or bfloat16, got "
                 << dtype_name(out_dtype));
  else
    PF_CHECK(out_dtype == a.dtype(), "embedding_sum: on the CPU the output dtype is the tables' ("
                                         << dtype_name(a.dtype()) << "), got " << dtype_name(out_dtype));
  Shape out_shape = ia.shape();
  out_shape.push_back(d.D);
  Tensor out = Tensor::empty(out_shape, out_dtype, a.device());
  launch_embedding_sum_forward(a, ia, b, ib, out, d);
  const bool need_a = a.requires_grad(), need_b = b.requires_grad();
  const Tensor sia = ia.detach(), sib = ib.detach();
  const DType table_dtype = a.dtype();
  return make_result(out, "embedding_sum", {a, ia, b, ib},
                     profile::timed([=](const Tensor& g) -> std::vector<Tensor> {
                       Tensor da = need_a ? Tensor::empty({d.Va, d.D}, table_dtype, g.device()) : Tensor();
                       Tensor db = need_b ? Tensor::empty({d.Vb, d.D}, table_dtype, g.device()) : Tensor();
                       launch_embedding_sum_backward(g, sia, sib, da, db, table_dtype, d);
                       return {da, Tensor(), db, Tensor()};
                     }));
}

}  // namespace pf::ops
