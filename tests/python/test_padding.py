"""flashlab.unpad_input / pad_input on numpy arrays: packing order, cu_seqlens, indices, max_seqlen, round trips with
right padding, arbitrary masks, empty and full sequences, and the errors."""

import os
import sys
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if not os.environ.get("FLASHLAB_TEST_INSTALLED"):  # else: the installed package (tests/python/wheel_test.sh)
    sys.path.insert(0, str(ROOT / "python"))
from flashlab import pad_input, unpad_input  # noqa: E402


class UnpadPad(unittest.TestCase):
    def test_right_padding(self):
        rng = np.random.default_rng(1)
        lengths = [5, 0, 8, 3]
        b, n, h, d = len(lengths), 8, 2, 4
        x = rng.standard_normal((b, n, h, d))
        mask = np.arange(n)[None, :] < np.array(lengths)[:, None]
        packed, indices, cu, max_seqlen, seqused = unpad_input(x, mask)
        self.assertEqual(packed.shape, (sum(lengths), h, d))
        self.assertEqual(cu.dtype, np.int32)
        self.assertEqual(cu.tolist(), [0, 5, 5, 13, 16])
        self.assertEqual(seqused.tolist(), lengths)
        self.assertEqual(max_seqlen, 8)
        self.assertEqual(indices.dtype, np.int64)
        # sequence b's tokens are packed in order at cu[b] .. cu[b + 1]
        for s, length in enumerate(lengths):
            np.testing.assert_array_equal(packed[cu[s]:cu[s + 1]], x[s, :length])
        back = pad_input(packed, indices, b, n)
        np.testing.assert_array_equal(back, np.where(mask[:, :, None, None], x, 0.0))

    def test_arbitrary_mask_and_extremes(self):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((3, 6, 5))
        mask = np.array([[1, 0, 1, 0, 0, 1], [0] * 6, [1] * 6])
        packed, indices, cu, max_seqlen, seqused = unpad_input(x, mask)
        self.assertEqual(indices.tolist(), [0, 2, 5] + list(range(12, 18)))
        self.assertEqual(cu.tolist(), [0, 3, 3, 9])
        self.assertEqual(max_seqlen, 6)
        np.testing.assert_array_equal(packed[:3], x[0, [0, 2, 5]])
        np.testing.assert_array_equal(pad_input(packed, indices, 3, 6), x * mask[:, :, None])
        empty, empty_indices, empty_cu, empty_max, _ = unpad_input(x, np.zeros((3, 6)))
        self.assertEqual(empty.shape, (0, 5))
        self.assertEqual(empty_cu.tolist(), [0, 0, 0, 0])
        self.assertEqual(empty_max, 0)
        np.testing.assert_array_equal(pad_input(empty, empty_indices, 3, 6), np.zeros((3, 6, 5)))

    def test_errors(self):
        x = np.zeros((2, 4, 3))
        with self.assertRaisesRegex(ValueError, "attention_mask has shape"):
            unpad_input(x, np.ones((2, 5)))
        packed, indices, *_ = unpad_input(x, np.ones((2, 4)))
        with self.assertRaisesRegex(ValueError, "rows and indices"):
            pad_input(packed[:3], indices, 2, 4)
        with self.assertRaisesRegex(ValueError, r"\[0, 6\)"):
            pad_input(packed, indices, 2, 3)


if __name__ == "__main__":
    unittest.main()
