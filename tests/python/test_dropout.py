"""Dropout through flashlab's Python package on numpy (no PyTorch): flashlab.dropout_mask against Philox4x32-10 and
the mask's counter layout written out here from their definitions (Salmon et al., SC'11; core/dropout.hpp's
comment), the kept fraction within a binomial bound, and flashlab.reference with dropout, forward and backward,
against an independent numpy attention under the mask, dense (GQA, causal, window) and varlen; a key-padded batch's
mask (attention_mask): the varlen mask at the valid tokens, and the varlen run padded back equal to a numpy attention
of the padded batch under it; the errors.
Needs the built libflashlab (FLASHLAB_LIBRARY, set by CTest)."""

import os
import sys
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if not os.environ.get("FLASHLAB_TEST_INSTALLED"):  # else: the installed package (tests/python/wheel_test.sh)
    sys.path.insert(0, str(ROOT / "python"))
import flashlab  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reference import naive  # noqa: E402  (the numpy attention, with dropout's keep mask)

MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on arrays of uint32 counters (Random123's round: two 32 x 32 -> 64 products, Weyl key steps)."""
    c = [np.asarray(x, dtype=np.uint64) for x in (c0, c1, c2, c3)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & MASK32]
        k0 = (k0 + np.uint64(0x9E3779B9)) & MASK32
        k1 = (k1 + np.uint64(0xBB67AE85)) & MASK32
    return c


def independent_mask(p, seed, offset, b, h, heads, nq, nk):
    """Keep (i, j) of query head h of batch entry b: the Philox draw with counter (key quad (j // 16) 4 + (j % 8) // 2,
    row pair (i // 16) 8 + i % 8, the 64-bit stream offset + b H + h), key seed; of its four words, word
    (i // 8) % 2 + 2 ((j // 8) % 2), of that word the 16-bit half j % 2 (low first), below floor((1 - p) 2^16)
    (2^16 - 1 at most for p > 0; p = 0 keeps all)."""
    if p == 0:
        return np.ones((nq, nk), dtype=bool)
    i = np.arange(nq, dtype=np.uint64)[:, None] + np.zeros((1, nk), dtype=np.uint64)
    j = np.arange(nk, dtype=np.uint64)[None, :] + np.zeros((nq, 1), dtype=np.uint64)
    stream = (offset + b * heads + h) % 2 ** 64
    u = np.uint64
    words = philox4x32_10((j // u(16)) * u(4) + (j % u(8)) // u(2), (i // u(16)) * u(8) + i % u(8),
                          np.full(i.shape, stream & 0xFFFFFFFF, dtype=np.uint64),
                          np.full(i.shape, stream >> 32, dtype=np.uint64), seed & 0xFFFFFFFF, seed >> 32)
    which = ((i // u(8)) % u(2) + u(2) * ((j // u(8)) % u(2))).astype(np.int64)
    piece = (np.choose(which, words) >> (u(16) * (j % u(2)))) & u(0xFFFF)
    threshold = min(int((1.0 - p) * 65536.0), 0xFFFF)
    return piece < np.uint64(threshold)


def padding_mask(side, n, lengths):
    """[B, n] valid tokens: lengths[b] of them at the start (right padding) or at the end (left padding)."""
    positions = np.arange(n)[None, :]
    lengths = np.asarray(lengths)[:, None]
    return positions < lengths if side == "right" else positions >= n - lengths


class Dropout(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.environ.get("FLASHLAB_LIBRARY") and not os.environ.get("FLASHLAB_TEST_INSTALLED"):
            raise unittest.SkipTest("FLASHLAB_LIBRARY is not set: point it at the built abi/libflashlab.so")

    def test_mask_is_philox_as_defined(self):
        for p, seed, offset, nq, nk in [(0.1, 0, 0, 17, 33), (0.5, 0x0123456789ABCDEF, 2 ** 32 - 3, 129, 97),
                                        (0.9, 2 ** 64 - 1, 2 ** 64 - 5, 40, 1), (0.0, 7, 7, 9, 9)]:
            with self.subTest(p=p, seed=seed, offset=offset):
                got = flashlab.dropout_mask(p, seed, offset, heads=3, batch=2, seqlen_q=nq, seqlen_k=nk)
                self.assertEqual(got.shape, (2, 3, nq, nk))
                self.assertEqual(got.dtype, bool)
                for b in range(2):
                    for h in range(3):
                        np.testing.assert_array_equal(got[b, h], independent_mask(p, seed, offset, b, h, 3, nq, nk))

    def test_offset_and_varlen_layout(self):
        # (b, h) takes the subsequence offset + b H + h: offset + 1 shifts the mask by one head
        a = flashlab.dropout_mask(0.3, 11, 0, heads=4, batch=2, seqlen_q=20, seqlen_k=24)
        b = flashlab.dropout_mask(0.3, 11, 1, heads=4, batch=2, seqlen_q=20, seqlen_k=24)
        np.testing.assert_array_equal(a.reshape(8, 20, 24)[1:], b.reshape(8, 20, 24)[:-1])
        c = flashlab.dropout_mask(0.3, 11, 8, heads=4, batch=2, seqlen_q=20, seqlen_k=24)  # offset + B H: fresh
        self.assertFalse((a == c).all())
        # varlen: rows and keys from the start of each sequence, entry b a dense batch entry b's top-left block
        lq, lk = [5, 0, 20], [24, 3, 7]
        v = flashlab.dropout_mask(0.3, 11, 0, heads=4, seqlens_q=lq, seqlens_k=lk)
        self.assertEqual([m.shape for m in v], [(4, 5, 24), (4, 0, 3), (4, 20, 7)])
        full = flashlab.dropout_mask(0.3, 11, 0, heads=4, batch=3, seqlen_q=20, seqlen_k=24)
        for s, m in enumerate(v):
            np.testing.assert_array_equal(m, full[s, :, :lq[s], :lk[s]])

    def test_kept_fraction_within_a_binomial_bound(self):
        for p in (0.05, 0.1, 0.5, 0.9):
            with self.subTest(p=p):
                keep = flashlab.dropout_mask(p, 1234, 0, heads=4, batch=2, seqlen_q=129, seqlen_k=257)
                n = keep.size
                sigma = np.sqrt(n * p * (1 - p))
                self.assertLess(abs(int(keep.sum()) - n * (1 - p)), 5 * sigma)
                # per (b, h) too: each subsequence is its own stream
                per = keep.reshape(8, -1).sum(axis=1)
                m = keep[0, 0].size
                self.assertTrue((np.abs(per - m * (1 - p)) < 5 * np.sqrt(m * p * (1 - p))).all(), per)

    def test_reference_dense_against_numpy(self):
        rng = np.random.default_rng(7)
        p_drop, seed, offset = 0.2, 99, 3
        for nq, nk, causal, window in [(17, 17, False, (-1, -1)), (9, 33, True, (-1, -1)), (33, 9, True, (-1, -1)),
                                       (40, 40, False, (6, 2))]:
            with self.subTest(nq=nq, nk=nk, causal=causal, window=window):
                q = rng.standard_normal((2, nq, 4, 8))
                k = rng.standard_normal((2, nk, 2, 8))
                v = rng.standard_normal((2, nk, 2, 6))
                d_out = rng.standard_normal((2, nq, 4, 6))
                kw = dict(causal=causal, window=window, dropout_p=p_drop, dropout_seed=seed, dropout_offset=offset)
                o, lse = flashlab.reference.attention(q, k, v, **kw)
                dq, dk, dv = flashlab.reference.attention_backward(q, k, v, o, lse, d_out, **kw)
                _, lse0 = flashlab.reference.attention(q, k, v, causal=causal, window=window)
                np.testing.assert_array_equal(lse, lse0)  # the LSE of the undropped P
                keep = flashlab.dropout_mask(p_drop, seed, offset, heads=4, batch=2, seqlen_q=nq, seqlen_k=nk)
                for b in range(2):
                    wo, _, wdq, wdk, wdv = naive(q[b], k[b], v[b], d_out[b], causal, window, keep=keep[b],
                                                 p_drop=p_drop)
                    np.testing.assert_allclose(o[b], wo, rtol=0, atol=1e-12)
                    for got, want in ((dq[b], wdq), (dk[b], wdk), (dv[b], wdv)):  # P from the float32 LSE
                        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))

    def test_reference_varlen_against_numpy(self):
        rng = np.random.default_rng(8)
        lq, lk = [5, 0, 19], [6, 3, 19]
        p_drop, seed, offset = 0.4, 2 ** 40 + 5, 12
        q = rng.standard_normal((sum(lq), 2, 8))
        k = rng.standard_normal((sum(lk), 1, 8))
        v = rng.standard_normal((sum(lk), 1, 8))
        d_out = rng.standard_normal((sum(lq), 2, 8))
        kw = dict(causal=True, seqlens_q=lq, seqlens_k=lk, dropout_p=p_drop, dropout_seed=seed, dropout_offset=offset)
        o, lse = flashlab.reference.attention(q, k, v, **kw)
        dq, dk, dv = flashlab.reference.attention_backward(q, k, v, o, lse, d_out, **kw)
        masks = flashlab.dropout_mask(p_drop, seed, offset, heads=2, seqlens_q=lq, seqlens_k=lk)
        a, c = 0, 0
        for nq, nk, keep in zip(lq, lk, masks):
            wo, _, wdq, wdk, wdv = naive(q[a:a + nq], k[c:c + nk], v[c:c + nk], d_out[a:a + nq], True, (-1, -1),
                                         keep=keep, p_drop=p_drop)
            np.testing.assert_allclose(o[a:a + nq], wo, rtol=0, atol=1e-12)
            for got, want in ((dq[a:a + nq], wdq), (dk[c:c + nk], wdk), (dv[c:c + nk], wdv)):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max(initial=0)))
            a, c = a + nq, c + nk

    def test_padded_mask_is_the_varlen_mask_at_the_valid_tokens(self):
        n, lengths = 12, [12, 5, 0, 1]
        for side in ("right", "left"):
            with self.subTest(side=side):
                valid = padding_mask(side, n, lengths)
                padded = flashlab.dropout_mask(0.4, 21, 3, heads=2, attention_mask=valid.astype(np.int32))
                self.assertEqual(padded.shape, (4, 2, n, n))
                for b, v in enumerate(lengths):
                    f = n - v if side == "left" else 0
                    # drawn at (i - f, j - f): the unpadded sequence's own rows and keys
                    for h in range(2):
                        np.testing.assert_array_equal(padded[b, h, f:f + v, f:f + v],
                                                      independent_mask(0.4, 21, 3, b, h, 2, v, v))
                    outside = np.ones((n, n), dtype=bool)
                    outside[f:f + v, f:f + v] = False
                    self.assertFalse(padded[b][:, outside].any())
        with self.assertRaisesRegex(ValueError, "attention_mask alone"):
            flashlab.dropout_mask(0.4, 21, 3, heads=2, batch=1, attention_mask=np.ones((1, 4)))

    def test_padded_batch_with_dropout_equals_its_varlen_run(self):
        # the varlen reference on unpad_input's batch, padded back, against a numpy attention of the padded batch
        # under the padded mask: the mask reproduces what the varlen run dropped, at the padded positions
        rng = np.random.default_rng(10)
        n, lengths, heads, heads_kv = 19, [19, 7, 0, 12], 4, 2
        p_drop, seed, offset = 0.3, 5, 2
        for side in ("right", "left"):
            for causal in (False, True):
                with self.subTest(side=side, causal=causal):
                    valid = padding_mask(side, n, lengths)
                    q = rng.standard_normal((len(lengths), n, heads, 8))
                    k = rng.standard_normal((len(lengths), n, heads_kv, 8))
                    v_ = rng.standard_normal((len(lengths), n, heads_kv, 8))
                    d_out = rng.standard_normal((len(lengths), n, heads, 8)) * valid[:, :, None, None]
                    (qu, idx, cu, _, used), (ku, _, _, _, _), (vu, _, _, _, _), (du, _, _, _, _) = (
                        flashlab.unpad_input(x, valid) for x in (q, k, v_, d_out))
                    kw = dict(causal=causal, seqlens_q=used.tolist(), seqlens_k=used.tolist(), dropout_p=p_drop,
                              dropout_seed=seed, dropout_offset=offset)
                    o, lse = flashlab.reference.attention(qu, ku, vu, **kw)
                    dq, dk, dv = flashlab.reference.attention_backward(qu, ku, vu, o, lse, du, **kw)
                    back = [flashlab.pad_input(x, idx, len(lengths), n) for x in (o, dq, dk, dv)]
                    keep = flashlab.dropout_mask(p_drop, seed, offset, heads=heads, attention_mask=valid)
                    for b in range(len(lengths)):
                        want = naive(q[b], k[b], v_[b], d_out[b], causal, (-1, -1), keep=keep[b], p_drop=p_drop,
                                     valid=valid[b])
                        np.testing.assert_allclose(back[0][b], want[0], rtol=0, atol=1e-12)
                        for got, w in zip(back[1:], want[2:]):  # P from the float32 LSE
                            np.testing.assert_allclose(got[b], w, rtol=0, atol=1e-5 * max(1.0, np.abs(w).max()))

    def test_zero_p_is_no_dropout(self):
        rng = np.random.default_rng(9)
        q = rng.standard_normal((1, 13, 2, 8))
        o0, lse0 = flashlab.reference.attention(q, q, q)
        o, lse = flashlab.reference.attention(q, q, q, dropout_p=0.0, dropout_seed=5, dropout_offset=6)
        np.testing.assert_array_equal(o, o0)
        np.testing.assert_array_equal(lse, lse0)

    def test_bad_p_and_seed_are_refused(self):
        q = np.zeros((1, 4, 2, 8))
        o, lse = flashlab.reference.attention(q, q, q)
        for p in (1.0, 1.5, -0.1, float("nan")):
            with self.subTest(p=p):
                with self.assertRaisesRegex(flashlab.InvalidArgument, "dropout"):
                    flashlab.reference.attention(q, q, q, dropout_p=p)
                with self.assertRaisesRegex(flashlab.InvalidArgument, "dropout"):
                    flashlab.reference.attention_backward(q, q, q, o, lse, o, dropout_p=p)
                with self.assertRaisesRegex(flashlab.InvalidArgument, "dropout"):
                    flashlab.dropout_mask(p, 0, 0, heads=2, batch=1, seqlen_q=4, seqlen_k=4)
        with self.assertRaisesRegex(ValueError, "dropout_seed"):
            flashlab.reference.attention(q, q, q, dropout_p=0.1, dropout_seed=-1)
        with self.assertRaisesRegex(ValueError, "dropout_offset"):
            flashlab.dropout_mask(0.1, 0, 2 ** 64, heads=2, batch=1, seqlen_q=4, seqlen_k=4)
        with self.assertRaisesRegex(ValueError, "seqlen_q"):
            flashlab.dropout_mask(0.1, 0, 0, heads=2, batch=1)


if __name__ == "__main__":
    unittest.main()
