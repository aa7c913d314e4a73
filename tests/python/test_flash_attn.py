"""flashlab.flash_attn_func / flash_attn_varlen_func on torch tensors (skipped without PyTorch).

CPU part: through the C ABI on the CPU variants. On cpu-reference in float64 the outputs and gradients must equal
flashlab.reference's bit for bit, also for strided (non-contiguous) inputs, so the layouts, strides and the
autograd plumbing are exact; cpu-standard in float32 stays within 1e-5 of it. The refused options name themselves.
Dropout on the CPU variants: cpu-reference in float64 bit for bit against flashlab.reference under the same seed and
offset (gradients too, dense and varlen), cpu-standard in float32 within 1e-5; the (seed, offset) drawn from torch's
generator as documented (flashlab.flash_attn), fresh on the next call, repeated after manual_seed, none drawn at
p = 0; S_dmask (return_attn_probs) against P and flashlab.dropout_mask; bad p refused.
GPU part (skipped without CUDA): flash2 and flash3 on the flash_attn layouts against the fp64 reference under
FlashAttention's rule (error at most twice PyTorch's math attention in the same dtype, plus one rounding step), for
dense, GQA, causal, window and varlen problems, the backward of flash2, and bitwise repeatable gradients with
deterministic=True. flash2 with dropout under the same rule (the baseline: eager attention in the same dtype under
flashlab.dropout_mask's mask), the generator's offset advanced as documented, bitwise repeatable with a fixed seed.
"""

import os
import sys
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if not os.environ.get("FLASHLAB_TEST_INSTALLED"):  # else: the installed package (tests/python/wheel_test.sh)
    sys.path.insert(0, str(ROOT / "python"))
import flashlab  # noqa: E402

try:
    import torch
except ImportError:  # the CPU CI has no PyTorch: these tests are skipped, and say so
    torch = None

CUDA = torch is not None and torch.cuda.is_available()


def reference(q, k, v, d_out, **kw):
    """flashlab.reference on the tensors' values (float64): O, LSE and the gradients."""
    qn, kn, vn, dn = (t.detach().double().cpu().numpy() for t in (q, k, v, d_out))
    o, lse = flashlab.reference.attention(qn, kn, vn, **kw)
    dq, dk, dv = flashlab.reference.attention_backward(qn, kn, vn, o, lse, dn, **kw)
    return o, lse, dq, dk, dv


@unittest.skipIf(torch is None, "PyTorch is not installed")
class OnTheCpuVariants(unittest.TestCase):
    def run_case(self, dtype, variant, causal=False, window=(-1, -1), scale=None, strided=False):
        g = torch.Generator().manual_seed(3)
        b, nq, nk, h, hkv, d = 2, 33, 47, 4, 2, 16
        if strided:  # [B, H, N, d] storage seen as [B, N, H, d]: token and head strides swapped
            q = torch.randn(b, h, nq, d, generator=g, dtype=dtype).transpose(1, 2)
            k = torch.randn(b, hkv, nk, d, generator=g, dtype=dtype).transpose(1, 2)
            v = torch.randn(b, hkv, nk, d, generator=g, dtype=dtype).transpose(1, 2)
        else:
            q = torch.randn(b, nq, h, d, generator=g, dtype=dtype)
            k = torch.randn(b, nk, hkv, d, generator=g, dtype=dtype)
            v = torch.randn(b, nk, hkv, d, generator=g, dtype=dtype)
        for t in (q, k, v):
            t.requires_grad_(True)
        d_out = torch.randn(b, nq, h, d, generator=g, dtype=dtype)
        o, lse, _ = flashlab.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window,
                                             return_attn_probs=True, variant=variant)
        o.backward(d_out)
        ro, rlse, rdq, rdk, rdv = reference(q, k, v, d_out, causal=causal, window=window, softmax_scale=scale)
        return (o, lse, q.grad, k.grad, v.grad), (ro, rlse, rdq, rdk, rdv)

    def test_cpu_reference_is_the_reference_bit_for_bit(self):
        for kw in ({}, {"causal": True}, {"window": (5, 3), "scale": 0.3}, {"causal": True, "strided": True}):
            with self.subTest(**kw):
                got, want = self.run_case(torch.float64, "cpu-reference", **kw)
                for name, x, y in zip(("o", "lse", "dq", "dk", "dv"), got, want):
                    # LSE is float32 in the library: compare it in float32
                    y = y.astype(np.float32) if name == "lse" else y
                    np.testing.assert_array_equal(x.detach().numpy(), y, err_msg=name)

    def test_cpu_standard_float32(self):
        got, want = self.run_case(torch.float32, "cpu-standard", causal=True)
        for name, x, y in zip(("o", "lse", "dq", "dk", "dv"), got, want):
            np.testing.assert_allclose(x.detach().double().numpy(), y, rtol=0, atol=1e-5, err_msg=name)

    def test_varlen(self):
        g = torch.Generator().manual_seed(4)
        lengths_q, lengths_k = [5, 0, 17], [9, 3, 0]
        h, hkv, d = 2, 1, 8
        q = torch.randn(sum(lengths_q), h, d, generator=g, dtype=torch.float64, requires_grad=True)
        k = torch.randn(sum(lengths_k), hkv, d, generator=g, dtype=torch.float64, requires_grad=True)
        v = torch.randn(sum(lengths_k), hkv, d, generator=g, dtype=torch.float64, requires_grad=True)
        cu_q = torch.tensor(np.concatenate([[0], np.cumsum(lengths_q)]), dtype=torch.int32)
        cu_k = torch.tensor(np.concatenate([[0], np.cumsum(lengths_k)]), dtype=torch.int32)
        o = flashlab.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 17, 9, causal=True, variant="cpu-reference")
        d_out = torch.randn(o.shape, generator=g, dtype=torch.float64)
        o.backward(d_out)
        ro, _, rdq, rdk, rdv = reference(q, k, v, d_out, causal=True, seqlens_q=lengths_q, seqlens_k=lengths_k)
        for x, y in ((o, ro), (q.grad, rdq), (k.grad, rdk), (v.grad, rdv)):
            np.testing.assert_array_equal(x.detach().numpy(), y)
        with self.assertRaisesRegex(ValueError, "max_seqlen_q = 16"):
            flashlab.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 16, 9, variant="cpu-reference")

    def test_dlpack_arrays_run_as_torch_tensors(self):
        # numpy arrays (any array with __dlpack__): the same outputs as the torch tensors they share memory with,
        # dense and varlen; an array without __dlpack__ is refused naming the argument
        g = np.random.default_rng(4)
        q, k, v = (g.standard_normal((2, 9, 2, 8)).astype(np.float32) for _ in range(3))
        got = flashlab.flash_attn_func(q, k, v, causal=True, variant="cpu-standard")
        want = flashlab.flash_attn_func(*(torch.from_numpy(x) for x in (q, k, v)), causal=True, variant="cpu-standard")
        self.assertIsInstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        cu = np.array([0, 9, 18], dtype=np.int32)
        flat = [x.reshape(18, 2, 8) for x in (q, k, v)]
        got_varlen = flashlab.flash_attn_varlen_func(*flat, cu, cu, 9, 9, causal=True, variant="cpu-standard")
        np.testing.assert_array_equal(got_varlen.numpy().reshape(2, 9, 2, 8), want.numpy())
        with self.assertRaisesRegex(TypeError, "q must be a torch.Tensor or an array with __dlpack__, not list"):
            flashlab.flash_attn_func(q.tolist(), k, v, variant="cpu-standard")

    def test_refused_options_name_themselves(self):
        q = torch.zeros(1, 4, 2, 8, dtype=torch.float64)
        for p in (1.0, -0.1, float("nan")):
            with self.assertRaisesRegex(ValueError, "dropout_p"):
                flashlab.flash_attn_func(q, q, q, dropout_p=p, variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "dropout_offset"):
            flashlab.flash_attn_func(q, q, q, dropout_p=0.1, dropout_offset=4, variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "dropout_seed"):
            flashlab.flash_attn_func(q, q, q, dropout_p=0.1, dropout_seed=-1, variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "softcap"):
            flashlab.flash_attn_func(q, q, q, softcap=30.0, variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "alibi_slopes"):
            flashlab.flash_attn_func(q, q, q, alibi_slopes=torch.ones(2), variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "share a dtype"):
            flashlab.flash_attn_func(q, q.float(), q, variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "expected"):
            flashlab.flash_attn_func(q[0], q[0], q[0], variant="cpu-reference")
        with self.assertRaisesRegex(ValueError, "last dimension"):
            flashlab.flash_attn_func(q.transpose(2, 3), q.transpose(2, 3), q.transpose(2, 3), variant="cpu-reference")
        with self.assertRaises(flashlab.FlashlabError):  # the library's own refusal: an unknown variant
            flashlab.flash_attn_func(q, q, q, variant="no-such-variant")


def inputs(dtype, b=2, nq=33, nk=47, h=4, hkv=2, d=16, seed=3, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(b, nq, h, d, generator=g, dtype=dtype, device=device)
    k = torch.randn(b, nk, hkv, d, generator=g, dtype=dtype, device=device)
    v = torch.randn(b, nk, hkv, d, generator=g, dtype=dtype, device=device)
    d_out = torch.randn(b, nq, h, d, generator=g, dtype=dtype, device=device)
    return q, k, v, d_out


def run_dropout(q, k, v, d_out, **kw):
    """flash_attn_func on leaf copies of q, k, v: (o, lse, S_dmask, dq, dk, dv)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    o, lse, s_dmask = flashlab.flash_attn_func(*leaves, return_attn_probs=True, **kw)
    o.backward(d_out)
    return (o.detach(), lse, s_dmask) + tuple(t.grad for t in leaves)


@unittest.skipIf(torch is None, "PyTorch is not installed")
class DropoutOnTheCpuVariants(unittest.TestCase):
    P, SEED, OFFSET = 0.17, 2 ** 33 + 7, 5

    def test_cpu_reference_is_the_reference_bit_for_bit(self):
        q, k, v, d_out = inputs(torch.float64)
        for kw in ({}, {"causal": True}, {"window_size": (5, 3), "softmax_scale": 0.3}):
            with self.subTest(**kw):
                got = run_dropout(q, k, v, d_out, dropout_p=self.P, dropout_seed=self.SEED,
                                  dropout_offset=self.OFFSET, variant="cpu-reference", **kw)
                rkw = dict(causal=kw.get("causal", False), window=kw.get("window_size", (-1, -1)),
                           softmax_scale=kw.get("softmax_scale"), dropout_p=self.P, dropout_seed=self.SEED,
                           dropout_offset=self.OFFSET)
                want = reference(q, k, v, d_out, **rkw)
                for name, x, y in zip(("o", "lse", "dq", "dk", "dv"), got[:2] + got[3:], want):
                    y = y.astype(np.float32) if name == "lse" else y
                    np.testing.assert_array_equal(x.detach().numpy(), y, err_msg=name)
                # the mask really drops: O differs from attention without dropout
                o0, _ = flashlab.reference.attention(*(t.numpy() for t in (q, k, v)), causal=rkw["causal"],
                                                     window=rkw["window"], softmax_scale=rkw["softmax_scale"])
                self.assertGreater(np.abs(got[0].numpy() - o0).max(), 1e-3)

    def test_cpu_standard_float32(self):
        q, k, v, d_out = inputs(torch.float32)
        got = run_dropout(q, k, v, d_out, dropout_p=self.P, dropout_seed=self.SEED, dropout_offset=self.OFFSET,
                          causal=True, variant="cpu-standard")
        want = reference(q, k, v, d_out, causal=True, dropout_p=self.P, dropout_seed=self.SEED,
                         dropout_offset=self.OFFSET)
        for name, x, y in zip(("o", "lse", "dq", "dk", "dv"), got[:2] + got[3:], want):
            np.testing.assert_allclose(x.detach().double().numpy(), y, rtol=0, atol=1e-5, err_msg=name)

    def test_varlen(self):
        g = torch.Generator().manual_seed(4)
        lengths_q, lengths_k = [5, 0, 17], [9, 3, 0]
        q = torch.randn(sum(lengths_q), 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
        k = torch.randn(sum(lengths_k), 1, 8, generator=g, dtype=torch.float64, requires_grad=True)
        v = torch.randn(sum(lengths_k), 1, 8, generator=g, dtype=torch.float64, requires_grad=True)
        cu_q = torch.tensor(np.concatenate([[0], np.cumsum(lengths_q)]), dtype=torch.int32)
        cu_k = torch.tensor(np.concatenate([[0], np.cumsum(lengths_k)]), dtype=torch.int32)
        o, _, s_dmask = flashlab.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 17, 9, dropout_p=0.3, dropout_seed=9,
                                                        causal=True, return_attn_probs=True,
                                                        variant="cpu-reference")
        d_out = torch.randn(o.shape, generator=g, dtype=torch.float64)
        o.backward(d_out)
        ro, _, rdq, rdk, rdv = reference(q, k, v, d_out, causal=True, seqlens_q=lengths_q, seqlens_k=lengths_k,
                                         dropout_p=0.3, dropout_seed=9)
        for x, y in ((o, ro), (q.grad, rdq), (k.grad, rdk), (v.grad, rdv)):
            np.testing.assert_array_equal(x.detach().numpy(), y)
        self.assertEqual(tuple(s_dmask.shape), (3, 2, 17, 9))
        masks = flashlab.dropout_mask(0.3, 9, 0, heads=2, seqlens_q=lengths_q, seqlens_k=lengths_k)
        for b, (nq, nk) in enumerate(zip(lengths_q, lengths_k)):
            block = s_dmask[b, :, :nq, :nk].numpy()
            i = np.arange(nq)[:, None] + nk - nq
            allowed = np.arange(nk)[None, :] <= i
            np.testing.assert_array_equal(block > 0, masks[b] & allowed)
            np.testing.assert_array_equal(block < 0, ~masks[b] & allowed)
            self.assertTrue((s_dmask[b, :, nq:, :] == 0).all() and (s_dmask[b, :, :, nk:] == 0).all())

    def test_attn_probs_are_p_signed_by_the_mask(self):
        q, k, v, d_out = inputs(torch.float64, nq=20, nk=20)
        o, lse, s_dmask = flashlab.flash_attn_func(q, k, v, dropout_p=0.5, dropout_seed=1, dropout_offset=2,
                                                   return_attn_probs=True, variant="cpu-reference")
        self.assertEqual(tuple(s_dmask.shape), (2, 4, 20, 20))
        keep = flashlab.dropout_mask(0.5, 1, 2, heads=4, batch=2, seqlen_q=20, seqlen_k=20)
        np.testing.assert_array_equal(s_dmask.numpy() > 0, keep)
        kh = k.repeat_interleave(2, dim=2)
        s = torch.einsum("bihd,bjhd->bhij", q, kh) / 4.0
        p = torch.exp(s - lse.double()[..., None])
        np.testing.assert_allclose(s_dmask.abs().numpy(), p.numpy(), rtol=1e-12, atol=0)
        _, _, none = flashlab.flash_attn_func(q, k, v, return_attn_probs=True, variant="cpu-reference")
        self.assertIsNone(none)  # as flash-attn: no S_dmask without dropout

    def test_seed_and_offset_from_torch_generator(self):
        q, k, v, d_out = inputs(torch.float64)
        torch.manual_seed(11)
        first = run_dropout(q, k, v, d_out, dropout_p=self.P, variant="cpu-reference")
        second = run_dropout(q, k, v, d_out, dropout_p=self.P, variant="cpu-reference")
        self.assertFalse(torch.equal(first[0], second[0]))  # the generator advanced: a fresh mask
        torch.manual_seed(11)
        again = run_dropout(q, k, v, d_out, dropout_p=self.P, variant="cpu-reference")
        torch.manual_seed(11)
        seed = int(torch.randint(0, 2 ** 63 - 1, ()))  # the documented draw
        explicit = run_dropout(q, k, v, d_out, dropout_p=self.P, dropout_seed=seed, dropout_offset=0,
                               variant="cpu-reference")
        for name, x, y, z in zip(("o", "lse", "s_dmask", "dq", "dk", "dv"), first, again, explicit):
            self.assertTrue(torch.equal(x, y), name)  # manual_seed repeats the mask, backward included
            self.assertTrue(torch.equal(x, z), name)  # and it is the documented (seed, 0)
        # p = 0 draws nothing from the generator (as flash-attn), and is attention without dropout
        torch.manual_seed(12)
        plain = run_dropout(q, k, v, d_out, dropout_p=0.0, variant="cpu-reference")
        after = torch.rand(1)
        torch.manual_seed(12)
        self.assertTrue(torch.equal(after, torch.rand(1)))
        ro, _, rdq, _, _ = reference(q, k, v, d_out)
        np.testing.assert_array_equal(plain[0].numpy(), ro)
        np.testing.assert_array_equal(plain[3].numpy(), rdq)
        self.assertIsNone(plain[2])


def allowed_keys(nq, nk, causal, window, device):
    """[N_q, N_k]: the keys each query row keeps, core/mask.hpp's rule written out (bottom-right causal, window)."""
    i = torch.arange(nq, device=device)[:, None] + nk - nq
    j = torch.arange(nk, device=device)[None, :]
    left, right = window
    right = 0 if causal and right < 0 else (min(right, 0) if causal else right)
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=device)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return allowed


def rule_error(x, ref):
    return float(np.abs(x.detach().double().cpu().numpy() - ref).max())


@unittest.skipUnless(CUDA, "no CUDA device")
class OnTheGpu(unittest.TestCase):
    CASES = [
        dict(b=2, nq=97, nk=97, h=4, hkv=4, d=64),
        dict(b=1, nq=129, nk=255, h=8, hkv=2, d=128, causal=True),
        dict(b=2, nq=255, nk=97, h=2, hkv=1, d=128, window=(16, 8)),
        dict(b=1, nq=1025, nk=1025, h=2, hkv=2, d=256, causal=True),
    ]

    def make(self, c, dtype, seed=5):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(c["b"], c["nq"], c["h"], c["d"], generator=g, device="cuda", dtype=dtype)
        k = torch.randn(c["b"], c["nk"], c["hkv"], c["d"], generator=g, device="cuda", dtype=dtype)
        v = torch.randn(c["b"], c["nk"], c["hkv"], c["d"], generator=g, device="cuda", dtype=dtype)
        d_out = torch.randn(c["b"], c["nq"], c["h"], c["d"], generator=g, device="cuda", dtype=dtype)
        return q, k, v, d_out

    def math(self, q, k, v, d_out, causal, window):
        """PyTorch's math attention in the same dtype (the baseline of the rule), bottom-right causal and window."""
        qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
        keep = allowed_keys(qt.shape[2], kt.shape[2], causal, window, "cuda")
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=keep,
                                                                 enable_gqa=kt.shape[1] != qt.shape[1])
        o.backward(d_out.transpose(1, 2))
        return o.transpose(1, 2), qt.grad.transpose(1, 2), kt.grad.transpose(1, 2), vt.grad.transpose(1, 2)

    def check(self, variant, backward):
        for c in self.CASES:
            for dtype in (torch.float16, torch.bfloat16):
                with self.subTest(variant=variant, dtype=dtype, **c):
                    causal, window = c.get("causal", False), c.get("window", (-1, -1))
                    q, k, v, d_out = self.make(c, dtype)
                    leaves = [t.clone().requires_grad_(backward) for t in (q, k, v)]
                    o = flashlab.flash_attn_func(*leaves, causal=causal, window_size=window, variant=variant)
                    ro, _, rdq, rdk, rdv = reference(q, k, v, d_out, causal=causal, window=window)
                    mo, mdq, mdk, mdv = self.math(q, k, v, d_out, causal, window)
                    step = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7  # one rounding step at 1
                    self.assertLessEqual(rule_error(o, ro), 2 * rule_error(mo, ro) + step)
                    if backward:
                        o.backward(d_out)
                        for got, base, ref in zip((l.grad for l in leaves), (mdq, mdk, mdv), (rdq, rdk, rdv)):
                            scale = float(np.abs(ref).max())
                            self.assertLessEqual(rule_error(got, ref), 2 * rule_error(base, ref) + step * scale)

    def test_flash2_forward_and_backward(self):
        self.check("flash2", backward=True)

    def test_flash3_forward(self):
        if torch.cuda.get_device_capability() != (9, 0):
            self.skipTest("flash3 runs on compute capability 9.0")
        self.check("flash3", backward=False)

    def test_deterministic_gradients_repeat_bit_for_bit(self):
        c = dict(b=2, nq=1025, nk=1025, h=4, hkv=2, d=128)
        q, k, v, d_out = self.make(c, torch.bfloat16)
        grads = []
        for _ in range(3):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            flashlab.flash_attn_func(*leaves, causal=True, deterministic=True).backward(d_out)
            grads.append([l.grad.clone() for l in leaves])
        for again in grads[1:]:
            for x, y in zip(grads[0], again):
                self.assertTrue(torch.equal(x, y))

    def math_dropout(self, q, k, v, d_out, causal, window, keep, p_drop):
        """Eager attention in q's dtype under the keep mask [B, H, N_q, N_k] (the baseline of the rule)."""
        qt, kt, vt = (t.detach().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
        group = qt.shape[1] // kt.shape[1]
        kk, vv = kt.repeat_interleave(group, dim=1), vt.repeat_interleave(group, dim=1)
        allowed = allowed_keys(qt.shape[2], kt.shape[2], causal, window, "cuda")
        s = (qt @ kk.transpose(-1, -2)) * (qt.shape[-1] ** -0.5)
        # a row the mask empties: softmax over zeros, then zeroed (its output is 0, as the reference's), no NaN
        s = torch.where(allowed.any(dim=-1, keepdim=True), s.masked_fill(~allowed, float("-inf")), 0)
        a = torch.softmax(s, dim=-1) * allowed
        a = a * torch.from_numpy(keep).to("cuda") / (1 - p_drop)
        o = a @ vv
        o.backward(d_out.transpose(1, 2))
        return o.transpose(1, 2), qt.grad.transpose(1, 2), kt.grad.transpose(1, 2), vt.grad.transpose(1, 2)

    def test_flash2_dropout_forward_and_backward(self):
        p_drop, seed, offset = 0.17, 2 ** 40 + 3, 8
        for c in self.CASES:
            for dtype in (torch.float16, torch.bfloat16):
                with self.subTest(dtype=dtype, **c):
                    causal, window = c.get("causal", False), c.get("window", (-1, -1))
                    q, k, v, d_out = self.make(c, dtype)
                    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
                    o = flashlab.flash_attn_func(*leaves, causal=causal, window_size=window, dropout_p=p_drop,
                                                 dropout_seed=seed, dropout_offset=offset)
                    o.backward(d_out)
                    ro, _, rdq, rdk, rdv = reference(q, k, v, d_out, causal=causal, window=window, dropout_p=p_drop,
                                                     dropout_seed=seed, dropout_offset=offset)
                    keep = flashlab.dropout_mask(p_drop, seed, offset, heads=c["h"], batch=c["b"], seqlen_q=c["nq"],
                                                 seqlen_k=c["nk"])
                    mo, mdq, mdk, mdv = self.math_dropout(q, k, v, d_out, causal, window, keep, p_drop)
                    step = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7
                    scale = 1 / (1 - p_drop)  # kept weights grow by 1 / (1 - p)
                    self.assertLessEqual(rule_error(o, ro), 2 * rule_error(mo, ro) + step * scale)
                    for got, base, ref in zip((l.grad for l in leaves), (mdq, mdk, mdv), (rdq, rdk, rdv)):
                        top = float(np.abs(ref).max())
                        self.assertLessEqual(rule_error(got, ref), 2 * rule_error(base, ref) + step * top)

    def test_flash2_dropout_repeats_and_advances_the_generator(self):
        c = dict(b=2, nq=257, nk=257, h=4, hkv=2, d=64)
        q, k, v, d_out = self.make(c, torch.bfloat16)
        generator = torch.cuda.default_generators[torch.cuda.current_device()]
        torch.cuda.manual_seed(21)
        runs = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            o = flashlab.flash_attn_func(*leaves, causal=True, dropout_p=0.1, deterministic=True)
            o.backward(d_out)
            runs.append([o.detach()] + [l.grad for l in leaves])
        step = flashlab.flash_attn.dropout_offset_increment(c["b"], c["h"])
        self.assertEqual(generator.get_offset(), 2 * step)
        self.assertFalse(torch.equal(runs[0][0], runs[1][0]))  # consecutive calls: fresh masks
        for offset, want in ((0, runs[0]), (step, runs[1])):  # the documented (seed, offset) of each call
            for _ in range(2):  # bitwise repeatable with a fixed seed, forward and deterministic backward
                leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
                o = flashlab.flash_attn_func(*leaves, causal=True, dropout_p=0.1, deterministic=True,
                                             dropout_seed=21, dropout_offset=offset)
                o.backward(d_out)
                for x, y in zip(want, [o.detach()] + [l.grad for l in leaves]):
                    self.assertTrue(torch.equal(x, y))

    def test_varlen_matches_dense_sequences(self):
        lengths = [17, 0, 300, 129]
        h, d = 4, 64
        g = torch.Generator(device="cuda").manual_seed(6)
        q, k, v = (torch.randn(sum(lengths), h, d, generator=g, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32, device="cuda")
        o = flashlab.flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=True)
        for s, n in enumerate(lengths):
            if n == 0:
                continue
            a, e = int(cu[s]), int(cu[s + 1])
            dense = flashlab.flash_attn_func(q[None, a:e], k[None, a:e], v[None, a:e], causal=True)
            self.assertTrue(torch.equal(o[a:e], dense[0]))


if __name__ == "__main__":
    unittest.main()
