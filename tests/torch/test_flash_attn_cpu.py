"""pairflash_torch.flash_attn_w_bias on the CPU, against float64 references.

- Gradients: torch.autograd.gradcheck in float64 (central differences, its default tolerances
  atol 1e-5 / rtol 1e-3 on the Jacobian entries) over q, k, v and the bias for every broadcast
  form of the bias, causal or not, odd and unequal sizes (Nq = 5, Nk = 7, D = 3), the
  relative-position table (R smaller than the sequence, so its clipping is exercised), a key
  padding mask with a fully masked batch entry, packed sequences with one of length 0, and
  non-contiguous inputs.
- Forward: out against the plain float64 reference (tests/torch/reference.py): ‖out − ref‖/‖ref‖
  ≤ 1e-12 for float64 (a few ulps of float64 over sums of Nk ≤ 33 terms), ≤ 1e-5 for float32
  inputs (the tolerance of our float32 kernel tests: fp32's unit roundoff is 6e-8).
- float32 gradients against the float64 reference's autograd: the same 1e-5.
- The deterministic backward twice: bitwise equal. Meta tensors: shapes and dtypes only.
  Bad input: one RuntimeError line naming what was expected and what was found.
Inputs are fresh random draws (seeded per test for a reproducible failure).
"""
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
from common import check_deterministic_backward, rel_err  # noqa: E402
from pairflash_torch import flash_attn_w_bias  # noqa: E402

F64 = torch.float64


def randn(*shape, dtype=F64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


class GradcheckDense(unittest.TestCase):
    B, H, NQ, NK, D = 2, 3, 5, 7, 3

    def setUp(self):
        torch.manual_seed(15)

    def qkv(self, nq=None, nk=None):
        b, h, d = self.B, self.H, self.D
        return (randn(b, nq or self.NQ, h, d), randn(b, nk or self.NK, h, d),
                randn(b, nk or self.NK, h, d))

    def test_every_bias_broadcast_form(self):
        b, h, nq, nk = self.B, self.H, self.NQ, self.NK
        shapes = [(b, h, nq, nk), (1, h, nq, nk), (b, 1, nq, nk), (1, 1, nq, nk), (h, nq, nk),
                  (nq, nk)]
        for shape in shapes:
            for causal in (False, True):
                with self.subTest(bias=shape, causal=causal):
                    q, k, v = self.qkv()
                    bias = randn(*shape)
                    f = lambda q, k, v, bias: flash_attn_w_bias(q, k, v, bias, causal=causal)
                    self.assertTrue(torch.autograd.gradcheck(f, (q, k, v, bias)))

    def test_no_bias_and_explicit_scale(self):
        for causal in (False, True):
            with self.subTest(causal=causal):
                f = lambda q, k, v: flash_attn_w_bias(q, k, v, None, causal, softmax_scale=0.3)
                self.assertTrue(torch.autograd.gradcheck(f, self.qkv()))

    def test_more_queries_than_keys_causal(self):
        # bottom-right causal with Nq > Nk: the first Nq - Nk rows see no key (output 0)
        q, k, v = self.qkv(nq=7, nk=4)
        bias = randn(1, self.H, 7, 4)
        f = lambda q, k, v, bias: flash_attn_w_bias(q, k, v, bias, causal=True)
        self.assertTrue(torch.autograd.gradcheck(f, (q, k, v, bias)))

    def test_single_query_and_key(self):
        q, k, v = self.qkv(nq=1, nk=1)
        bias = randn(self.B, 1, 1, 1)
        self.assertTrue(torch.autograd.gradcheck(flash_attn_w_bias, (q, k, v, bias)))

    def test_relpos_table(self):
        r = 2  # 2R+1 = 5 < Nq + Nk - 1: the clipping is exercised
        for with_bias in (False, True):
            for causal in (False, True):
                with self.subTest(bias=with_bias, causal=causal):
                    q, k, v = self.qkv()
                    table = randn(self.H, 2 * r + 1)
                    bias = randn(1, self.H, self.NQ, self.NK) if with_bias else None

                    def f(q, k, v, table, bias=bias):
                        return flash_attn_w_bias(q, k, v, bias, causal, relpos_table=table)
                    args = (q, k, v, table) + ((bias,) if with_bias else ())
                    self.assertTrue(torch.autograd.gradcheck(f, args))

    def test_key_padding_mask(self):
        q, k, v = self.qkv()
        bias = randn(self.B, self.H, self.NQ, self.NK)
        mask = torch.zeros(self.B, self.NK, dtype=torch.bool)
        mask[0, 2] = mask[0, 5] = True
        mask[1, :] = True  # every key of batch entry 1 ignored: its rows are 0, no gradient
        f = lambda q, k, v, bias: flash_attn_w_bias(q, k, v, bias, key_padding_mask=mask)
        self.assertTrue(torch.autograd.gradcheck(f, (q, k, v, bias)))
        out = f(q, k, v, bias)
        self.assertEqual(out[1].abs().max().item(), 0.0)

    def test_expanded_bias(self):
        # A bias expand()ed over batch and rows (stride 0 on dims of size > 1): read as a copy,
        # and autograd's expand sums dbias back to the (1,H,1,Nk) parameter.
        q, k, v = self.qkv()
        key_bias = randn(1, self.H, 1, self.NK)
        f = lambda q, k, v, kb: flash_attn_w_bias(q, k, v, kb.expand(self.B, -1, self.NQ, -1))
        self.assertTrue(torch.autograd.gradcheck(f, (q, k, v, key_bias)))

    def test_non_contiguous_inputs(self):
        b, h, nq, nk, d = self.B, self.H, self.NQ, self.NK, self.D
        # (B,H,N,D) tensors viewed as (B,N,H,D), and a transposed bias
        q = randn(b, h, nq, d).transpose(1, 2)
        k = randn(b, h, nk, d).transpose(1, 2)
        v = randn(b, h, nk, 2 * d)[..., ::2].transpose(1, 2)  # and stride 2 on D
        bias = randn(b, h, nk, nq).transpose(2, 3)
        self.assertTrue(torch.autograd.gradcheck(flash_attn_w_bias, (q, k, v, bias)))


class GradcheckPacked(unittest.TestCase):
    def test_packed_sequences(self):
        torch.manual_seed(16)
        h, d = 2, 3
        lq, lk = [3, 0, 5, 2], [4, 2, 5, 0]  # a sequence without queries, one without keys
        cu_q = torch.tensor([0] + lq, dtype=torch.int32).cumsum(0).int()
        cu_k = torch.tensor([0] + lk, dtype=torch.int32).cumsum(0).int()
        q, k, v = randn(sum(lq), h, d), randn(sum(lk), h, d), randn(sum(lk), h, d)
        bias = randn(sum(h * a * b for a, b in zip(lq, lk)))
        table = randn(h, 5)
        for causal in (False, True):
            with self.subTest(causal=causal):
                def f(q, k, v, bias, table):
                    return flash_attn_w_bias(q, k, v, bias, causal, relpos_table=table,
                                             cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
                self.assertTrue(torch.autograd.gradcheck(f, (q, k, v, bias, table)))
                ref = reference.attention_packed(q, k, v, cu_q, cu_k, bias, causal,
                                                 relpos_table=table)
                self.assertLessEqual(rel_err(f(q, k, v, bias, table), ref), 1e-12)


class AgainstReference(unittest.TestCase):
    """Forward (float64, float32) and float32 gradients against the plain float64 reference."""

    def setUp(self):
        torch.manual_seed(17)

    def cases(self):
        # (B, H, Nq, Nk, D, bias shape or None, causal, relpos R or None, mask)
        yield 2, 4, 17, 33, 16, (2, 4, 17, 33), False, None, False
        yield 3, 2, 33, 17, 8, (1, 2, 33, 17), True, None, True
        yield 1, 3, 29, 29, 32, (1, 1, 29, 29), True, 4, False
        yield 2, 1, 1, 9, 5, None, False, 1, True

    def run_case(self, dtype, B, H, nq, nk, d, bshape, causal, r, masked):
        q, k, v = randn(B, nq, H, d), randn(B, nk, H, d), randn(B, nk, H, d)
        bias = randn(*bshape) if bshape else None
        table = randn(H, 2 * r + 1) if r is not None else None
        mask = torch.rand(B, nk) < 0.3 if masked else None
        ins = [t for t in (q, k, v, bias, table) if t is not None]
        low = [t.detach().to(dtype).requires_grad_() for t in ins]
        # the reference sees the very values the kernel gets (rounded to dtype), in float64
        ref_in = [t.detach().to(F64).requires_grad_() for t in low]

        def call(fn, ts, **kw):
            it = iter(ts)
            q, k, v = next(it), next(it), next(it)
            b = next(it) if bias is not None else None
            t = next(it) if table is not None else None
            return fn(q, k, v, b, causal, relpos_table=t, key_padding_mask=mask, **kw)

        def ref_fn(q, k, v, b, causal, relpos_table, key_padding_mask):
            return reference.attention(q, k, v, b, causal, None, relpos_table, key_padding_mask)

        out = call(flash_attn_w_bias, low)
        ref = call(ref_fn, ref_in)
        tol = 1e-12 if dtype == F64 else 1e-5
        self.assertLessEqual(rel_err(out.to(F64), ref), tol)
        dout = torch.randn_like(ref)
        grads = torch.autograd.grad(out, low, dout.to(dtype))
        ref_grads = torch.autograd.grad(ref, ref_in, dout)
        names = [n for n, t in zip("q k v bias table".split(), (q, k, v, bias, table))
                 if t is not None]
        for name, g, rg in zip(names, grads, ref_grads):
            self.assertLessEqual(rel_err(g.to(F64), rg), tol, name)

    def test_float64(self):
        for c in self.cases():
            with self.subTest(case=c):
                self.run_case(F64, *c)

    def test_float32(self):
        for c in self.cases():
            with self.subTest(case=c):
                self.run_case(torch.float32, *c)

    def test_shared_bias_gradient_is_the_sum(self):
        # dB of a bias shared over the batch is the sum over the batch of the per-batch dB.
        B, H, n, d = 3, 2, 11, 8
        q, k, v = randn(B, n, H, d), randn(B, n, H, d), randn(B, n, H, d)
        shared = randn(1, H, n, n)
        full = shared.detach().expand(B, H, n, n).clone().requires_grad_()
        dout = torch.randn(B, n, H, d, dtype=F64)
        (g_shared,) = torch.autograd.grad(flash_attn_w_bias(q, k, v, shared), shared, dout)
        (g_full,) = torch.autograd.grad(flash_attn_w_bias(q, k, v, full), full, dout)
        self.assertEqual(g_shared.shape, shared.shape)
        self.assertLessEqual(rel_err(g_shared, g_full.sum(0, keepdim=True)), 1e-12)


class Behaviour(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(18)

    def test_deterministic_backward_is_bitwise_repeatable(self):
        q, k, v = randn(2, 19, 2, 8), randn(2, 23, 2, 8), randn(2, 23, 2, 8)
        check_deterministic_backward(self, q, k, v, randn(1, 2, 19, 23), randn(2, 7))

    def test_only_wanted_gradients(self):
        # k and the bias need no gradient: dq and dv are those of the call where all do.
        q, k, v = randn(1, 4, 1, 4), randn(1, 6, 1, 4, grad=False), randn(1, 6, 1, 4)
        bias = randn(1, 1, 4, 6, grad=False)
        gq, gv = torch.autograd.grad(flash_attn_w_bias(q, k, v, bias).sum(), (q, v))
        k_all, bias_all = k.detach().requires_grad_(), bias.detach().requires_grad_()
        all_grads = torch.autograd.grad(flash_attn_w_bias(q, k_all, v, bias_all).sum(),
                                        (q, k_all, v, bias_all))
        self.assertTrue(torch.equal(gq, all_grads[0]) and torch.equal(gv, all_grads[2]))

    def test_meta_shapes(self):
        m = dict(device="meta")
        q, k = torch.empty(2, 5, 3, 16, **m), torch.empty(2, 7, 3, 16, **m)
        out, lse = torch.ops.pairflash.flash_attn(q, k, k, torch.empty(1, 3, 5, 7, **m), None,
                                                  None, None, None, 0, 0, False, 0.25, False)
        self.assertEqual((out.shape, out.device.type), ((2, 5, 3, 16), "meta"))
        self.assertEqual((lse.shape, lse.dtype), ((2, 3, 5), torch.float32))
        cu = torch.empty(4, dtype=torch.int32, **m)
        qp = torch.empty(10, 3, 16, dtype=F64, **m)
        out, lse = torch.ops.pairflash.flash_attn(qp, qp, qp, None, None, None, cu, cu, 5, 5,
                                                  True, 0.25, False)
        self.assertEqual((out.shape, lse.shape, lse.dtype), ((10, 3, 16), (3, 10), F64))

    def test_fake_kernels_agree_with_the_real_ones(self):
        # The shapes-only kernels that tracing sees: the real outputs' shapes and dtypes.
        from pairflash_torch import flash_attn_backward_fake, flash_attn_fake
        cu = torch.tensor([0, 3, 7], dtype=torch.int32)
        dense = (randn(2, 5, 3, 4), randn(2, 7, 3, 4), randn(2, 7, 3, 4), randn(1, 3, 5, 7),
                 randn(3, 5), None, None, None, 0, 0, True, 0.5, False)
        packed = (randn(7, 3, 4), randn(7, 3, 4), randn(7, 3, 4), randn(3 * (9 + 16)),
                  randn(3, 5), None, cu, cu, 4, 4, False, 0.5, False)
        for name, args in (("dense", dense), ("packed", packed)):
            for dtype in (F64, torch.float32):
                a = [x.detach().to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x
                     for x in args]
                real, fake = torch.ops.pairflash.flash_attn(*a), flash_attn_fake(*a)
                describe = lambda ts: [(tuple(t.shape), t.dtype) for t in ts]
                self.assertEqual(describe(real), describe(fake), f"{name} {dtype}")
                for mask in ([True] * 5, [True, False, True, False, True], [False] * 5):
                    bwd = [real[0].clone(), *a[:3], *real, *a[3:], mask]
                    self.assertEqual(describe(torch.ops.pairflash.flash_attn_backward(*bwd)),
                                     describe(flash_attn_backward_fake(*bwd)),
                                     f"{name} {dtype} {mask}")

    def test_traced_graph_holds_the_operators(self):
        q, k, v = randn(1, 5, 2, 4), randn(1, 6, 2, 4), randn(1, 6, 2, 4)
        bias = randn(1, 2, 5, 6)
        if hasattr(torch, "compile"):  # PyTorch 2: the whole call in one graph, no break
            explain = torch._dynamo.explain(flash_attn_w_bias)(q, k, v, bias, True)
            self.assertEqual(explain.graph_break_count, 0)
            compiled = torch.compile(flash_attn_w_bias, backend="aot_eager", fullgraph=True)
            out, ref = compiled(q, k, v, bias, True), flash_attn_w_bias(q, k, v, bias, True)
            self.assertTrue(torch.equal(out, ref))
            g, rg = torch.autograd.grad(out.sum(), q), torch.autograd.grad(ref.sum(), q)
            self.assertTrue(torch.equal(g[0], rg[0]))
        else:  # PyTorch 1.13: fake-tensor tracing runs through the Meta kernels
            from torch.fx.experimental.proxy_tensor import make_fx

            def fwd_bwd(q, k, v, bias):
                out = flash_attn_w_bias(q, k, v, bias, True)
                return torch.autograd.grad(out.sum(), (q, k, v, bias))
            gm = make_fx(fwd_bwd, tracing_mode="fake")(q, k, v, bias)
            targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
            self.assertIn("pairflash.flash_attn.default", targets)
            self.assertIn("pairflash.flash_attn_backward.default", targets)

    def test_bad_input_names_expected_and_found(self):
        q, k = torch.randn(2, 5, 3, 4), torch.randn(2, 7, 3, 4)
        cases = [
            ((q, k, k, torch.randn(2, 3, 7, 5)), {}, "bias must be (B|1,H|1,Nq,Nk) = (2|1,3|1,5,7)"),
            ((q, k, k.double(), None), {}, "q, k, v must share one dtype"),
            ((q.half(), k.half(), k.half(), None), {}, "must be float32 or float64, got Half"),
            ((q, k, k, None), {"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool)},
             "key_padding_mask must be (B,Nk) = (2,7), got [2, 5]"),
            ((q, k, k, None), {"relpos_table": torch.randn(3, 4)}, "with an odd width, got [3, 4]"),
            ((q, k, k, torch.randn(1, 3, 5, 7).double()), {}, "bias on the CPU must have q's dtype"),
            ((q[0], k[0], k[0], None), {"cu_seqlens_q": torch.tensor([0, 2, 5], dtype=torch.int32),
                                        "cu_seqlens_k": torch.tensor([0, 3, 6], dtype=torch.int32)},
             "cu_seqlens end at Tq=5 and Tk=6, got q [5, 3, 4] and k [7, 3, 4]"),
        ]
        for args, kw, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(RuntimeError) as cm:
                    flash_attn_w_bias(*args, **kw)
                self.assertIn(message, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
