"""flashlab.reference (python/flashlab) against an independent numpy attention: dense GQA with causal and window
masks, N_q != N_k, varlen with an empty sequence, the backward, and the errors. Needs the built libflashlab
(FLASHLAB_LIBRARY, set by CTest)."""

import os
import sys
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if not os.environ.get("FLASHLAB_TEST_INSTALLED"):  # else: the installed package (tests/python/wheel_test.sh)
    sys.path.insert(0, str(ROOT / "python"))
import flashlab  # noqa: E402


def naive(q, k, v, d_out, causal, window, scale=None, keep=None, p_drop=0.0, valid=None):
    """One sequence: q [N_q, H, d], k and v [N_k, H_kv, d]; the mask rule of core/mask.hpp, written out here.
    With dropout, keep [H, N_q, N_k] is the keep mask Z: O = (Z o P / (1 - p)) V, LSE from the undropped P; the
    backward as FlashAttention-2: dP = Z o (dO V^T) / (1 - p), dS = P o (dP - rowsum(dO o O)),
    dV = (Z o P / (1 - p))^T dO. valid [N] (N_q == N_k, a padded self-attention entry): only pairs of valid tokens
    are kept (the causal and window rule on the padded positions, which for one interval of valid tokens is the rule
    inside it)."""
    nq, h, d = q.shape
    nk, hkv, _ = k.shape
    scale = 1 / np.sqrt(d) if scale is None else scale
    left, right = window
    if causal:
        right = 0 if right < 0 else min(right, 0)
    o = np.zeros((nq, h, v.shape[2]))
    lse = np.full((h, nq), -np.inf)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for head in range(h):
        g = head // (h // hkv)
        s = scale * q[:, head, :] @ k[:, g, :].T
        i = np.arange(nq)[:, None] + nk - nq
        j = np.arange(nk)[None, :]
        allowed = np.ones((nq, nk), dtype=bool)
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        if valid is not None:
            allowed &= np.asarray(valid, dtype=bool)[:, None] & np.asarray(valid, dtype=bool)[None, :]
        s = np.where(allowed, s, -np.inf)
        m = s.max(axis=1, keepdims=True)
        rows = np.isfinite(m[:, 0])
        p = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
        den = p.sum(axis=1, keepdims=True)
        p = np.where(den > 0, p / np.where(den > 0, den, 1), 0)
        z = 1.0 if keep is None else keep[head] / (1 - p_drop)
        o[:, head, :] = (z * p) @ v[:, g, :]
        lse[head, rows] = (m[rows, 0] + np.log(den[rows, 0]))
        dp = z * (d_out[:, head, :] @ v[:, g, :].T)
        ds = p * (dp - (d_out[:, head, :] * o[:, head, :]).sum(axis=1, keepdims=True))
        dq[:, head, :] = scale * ds @ k[:, g, :]
        dk[:, g, :] += scale * ds.T @ q[:, head, :]
        dv[:, g, :] += (z * p).T @ d_out[:, head, :]
    return o, lse, dq, dk, dv


class Reference(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.environ.get("FLASHLAB_LIBRARY") and not os.environ.get("FLASHLAB_TEST_INSTALLED"):
            raise unittest.SkipTest("FLASHLAB_LIBRARY is not set: point it at the built abi/libflashlab.so")

    def test_dense_gqa_masks(self):
        rng = np.random.default_rng(3)
        for nq, nk, causal, window in [(9, 9, False, (-1, -1)), (9, 13, True, (-1, -1)), (13, 9, True, (-1, -1)),
                                       (17, 17, False, (4, 2)), (12, 20, True, (5, -1))]:
            with self.subTest(nq=nq, nk=nk, causal=causal, window=window):
                q = rng.standard_normal((2, nq, 4, 8))
                k = rng.standard_normal((2, nk, 2, 8))
                v = rng.standard_normal((2, nk, 2, 6))
                d_out = rng.standard_normal((2, nq, 4, 6))
                o, lse = flashlab.reference.attention(q, k, v, causal=causal, window=window)
                dq, dk, dv = flashlab.reference.attention_backward(q, k, v, o, lse, d_out, causal=causal,
                                                                   window=window)
                for b in range(2):
                    wo, wl, wdq, wdk, wdv = naive(q[b], k[b], v[b], d_out[b], causal, window)
                    np.testing.assert_allclose(o[b], wo, rtol=0, atol=1e-12)
                    finite = np.isfinite(wl)
                    np.testing.assert_array_equal(np.isfinite(lse[b]), finite)
                    np.testing.assert_allclose(lse[b][finite], wl[finite], rtol=3e-7, atol=1e-6)
                    for got, want in ((dq[b], wdq), (dk[b], wdk), (dv[b], wdv)):  # P from the float32 LSE
                        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))

    def test_varlen_with_an_empty_sequence(self):
        rng = np.random.default_rng(5)
        lq, lk = [5, 0, 7], [6, 3, 7]
        q = rng.standard_normal((sum(lq), 2, 8))
        k = rng.standard_normal((sum(lk), 1, 8))
        v = rng.standard_normal((sum(lk), 1, 8))
        o, lse = flashlab.reference.attention(q, k, v, causal=True, seqlens_q=lq, seqlens_k=lk)
        self.assertEqual(lse.shape, (2, sum(lq)))
        zeros = np.zeros((sum(lq), 2, 8))
        a, c = 0, 0
        for nq, nk in zip(lq, lk):
            want, _, _, _, _ = naive(q[a:a + nq], k[c:c + nk], v[c:c + nk], zeros[a:a + nq], True, (-1, -1))
            np.testing.assert_allclose(o[a:a + nq], want, rtol=0, atol=1e-12)
            a, c = a + nq, c + nk

    def test_errors_name_the_problem(self):
        q = np.zeros((1, 4, 3, 8))
        kv = np.zeros((1, 4, 2, 8))
        with self.assertRaises(flashlab.InvalidArgument) as e:  # 2 kv heads do not divide 3 heads
            flashlab.reference.attention(q, kv, kv)
        self.assertIn("heads_kv", str(e.exception))
        with self.assertRaises(ValueError):
            flashlab.reference.attention(np.zeros((4, 3, 8)), kv, kv)
        with self.assertRaises(ValueError):
            flashlab.reference.attention(q[:, :, :2], kv, kv, seqlens_q=[4], seqlens_k=None)
        self.assertIn("cpu-reference", flashlab.variants())


if __name__ == "__main__":
    unittest.main()
