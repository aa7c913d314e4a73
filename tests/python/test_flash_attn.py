"""flashlab.flash_attn_func / flash_attn_varlen_func on torch tensors (skipped without PyTorch).

CPU part: through the C ABI on the CPU variants. On cpu-reference in float64 the outputs and gradients must equal
flashlab.reference's bit for bit, also for strided (non-contiguous) inputs, so the layouts, strides and the
autograd plumbing are exact; cpu-standard in float32 stays within 1e-5 of it. The refused options name themselves.
GPU part (skipped without CUDA): flash2 and flash3 on the flash_attn layouts against the fp64 reference under
FlashAttention's rule (error at most twice PyTorch's math attention in the same dtype, plus one rounding step), for
dense, GQA, causal, window and varlen problems, the backward of flash2, and bitwise repeatable gradients with
deterministic=True.
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

    def test_refused_options_name_themselves(self):
        q = torch.zeros(1, 4, 2, 8, dtype=torch.float64)
        with self.assertRaisesRegex(NotImplementedError, "dropout_p"):
            flashlab.flash_attn_func(q, q, q, dropout_p=0.1, variant="cpu-reference")
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
        nq, nk = qt.shape[2], kt.shape[2]
        i = torch.arange(nq, device="cuda")[:, None] + nk - nq
        j = torch.arange(nk, device="cuda")[None, :]
        left, right = window
        right = 0 if causal and right < 0 else (min(right, 0) if causal else right)
        keep = torch.ones(nq, nk, dtype=torch.bool, device="cuda")
        if left >= 0:
            keep &= j >= i - left
        if right >= 0:
            keep &= j <= i + right
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
