"""experiments/peers/flashlab_inputs.py reproduces flashlab's inputs bit for bit.

The flashlab binary (FLASHLAB_BINARY; CTest passes the built one) runs a small suite with --save-tensors: every
distribution in fp16, bf16 and fp32 with GQA (H = 4, H_kv = 2), N_q != N_k and d != d_v; a key sequence past the ramp
period (8192 tokens); a varlen batch with an empty sequence. Each row's saved q, k, v and d_out (fp16 as <f2, bf16
widened to float32, fp32 as <f4: all widen to float64 exactly) must equal the numpy port's float64 values bit for bit.
The seed has both 32-bit words nonzero, so both Philox key words matter. round_to is also checked against
independent oracles: numpy's own float64 -> float16 / float32 casts (direct round to nearest even, subnormals
included), and for bf16 too a nearest-neighbour-by-distance rounding on random values and exact ties (a bf16 tie is
~1 element in 10^5 of random inputs, too rare for the small suite to catch a double rounding through float32).
"""

import csv
import importlib.util
import itertools
import math
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("flashlab_inputs", ROOT / "experiments/peers/flashlab_inputs.py")
fi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fi)

SEED = 0x0123456789ABCDEF
DTYPES = ["fp16", "bf16", "fp32"]
INPUTS = ["q", "k", "v", "d_out"]
RAMP_PERIOD = 8192
# The suite as data: each sweep's fixed keys and axes; the row count and the coverage checks derive from it.
SWEEPS = [
    ({"batch": 2, "heads": 4, "heads_kv": 2, "seqlen_q": 17, "seqlen_k": 33, "head_dim": 40, "head_dim_v": 24},
     {"dtype": DTYPES, "distribution": list(fi.DISTRIBUTIONS)}),
    # K tokens past the ramp period, and the even/odd tokens of ties, over 8200 keys (cheap: 3 queries)
    ({"dtype": "fp16", "batch": 1, "heads": 2, "heads_kv": 1, "seqlen_q": 3, "seqlen_k": RAMP_PERIOD + 8,
      "head_dim": 8},
     {"distribution": ["ramp", "ties"]}),
    # varlen: the packed layout [1, total, H, d], an empty query sequence and one without keys
    ({"dtype": "bf16", "heads": 4, "heads_kv": 1, "head_dim": 16, "seqlens_q": [17, 0, 5], "seqlens_k": [9, 3, 0]},
     {"distribution": ["peaked", "ties"]}),
]
ROWS = sum(math.prod(len(values) for values in axes.values()) for _, axes in SWEEPS)


def toml_value(value):
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml_table(table):
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in table.items()) + " }"


def suite_toml():
    lines = ['[suite]', 'name = "peer_inputs"', 'description = "flashlab inputs against the numpy port"',
             "warmup = 0", "repetitions = 1", "profile = false", 'verify = "none"', "",
             # cpu-standard: the cheapest variant; fwdbwd: d_out is generated and saved only with a backward
             "[fixed]", 'variant = "cpu-standard"', 'pass = "fwdbwd"']
    for fixed, axes in SWEEPS:
        lines += ["", "[[sweep]]", f"fixed = {toml_table(fixed)}", f"axes = {toml_table(axes)}"]
    return "\n".join(lines) + "\n"


def bits(values):
    """float64 bit patterns of a saved or ported tensor (widening fp16 / float32 to float64 is exact)."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)


def ported_inputs(row, tensors):
    """The port's inputs for one results.csv row; a varlen row in its packed layout (totals from cu_seqlens)."""
    if row["varlen"] == "1":
        extent = {"batch": 1, "seqlen_q": int(np.load(tensors / "cu_seqlens_q.npy")[-1]),
                  "seqlen_k": int(np.load(tensors / "cu_seqlens_k.npy")[-1])}
    else:
        extent = {k: int(row[k]) for k in ("batch", "seqlen_q", "seqlen_k")}
    return fi.inputs(heads=int(row["heads"]), heads_kv=int(row["heads_kv"]), head_dim=int(row["head_dim"]),
                     head_dim_v=int(row["head_dim_v"]), seed=int(row["seed"]), distribution=row["distribution"],
                     dtype=row["dtype"], **extent)


class AgainstFlashlab(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        binary = os.environ.get("FLASHLAB_BINARY")
        if not binary:
            raise unittest.SkipTest("FLASHLAB_BINARY is not set: point it at the built flashlab "
                                    "(e.g. build/cpu/harness/flashlab; CTest sets it)")
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = Path(cls.tmp.name)
        (tmp / "suite.toml").write_text(suite_toml())
        done = subprocess.run(
            [binary, "run", str(tmp / "suite.toml"), "--out", str(tmp / "out"), "--run-id", "r", "--seed", str(SEED),
             "--save-tensors", f"0-{ROWS - 1}"],
            env={**os.environ, "FLASHLAB_THREADS": "2"}, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"flashlab run exited {done.returncode}:\n{done.stderr[-3000:]}")
        cls.run_dir = tmp / "out" / "peer_inputs" / "r"
        with open(cls.run_dir / "results.csv", newline="") as f:
            cls.rows = list(csv.DictReader(f))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def tensors(self, row):
        return self.run_dir / "tensors" / f"row-{row['row_index']}"

    def saved(self, row, name):
        return np.load(self.tensors(row) / f"{name}.npy")

    def test_suite_ran_every_row(self):
        self.assertEqual(len(self.rows), ROWS)
        self.assertEqual({r["status"] for r in self.rows}, {"ok"})
        self.assertEqual({r["seed"] for r in self.rows}, {str(SEED)})
        covered = {(r["dtype"], r["distribution"]) for r in self.rows}
        self.assertLessEqual(set(itertools.product(DTYPES, fi.DISTRIBUTIONS)), covered)
        self.assertTrue(any(int(r["heads_kv"]) < int(r["heads"]) for r in self.rows), "no GQA row")
        self.assertTrue(any(r["varlen"] == "1" for r in self.rows), "no varlen row")

    def test_inputs_equal_bit_for_bit(self):
        for row in self.rows:
            ported = ported_inputs(row, self.tensors(row))
            for name in INPUTS:
                with self.subTest(row=row["row_index"], dtype=row["dtype"], distribution=row["distribution"],
                                  tensor=name):
                    saved = self.saved(row, name)
                    self.assertEqual(saved.dtype.str, {"fp16": "<f2", "bf16": "<f4", "fp32": "<f4"}[row["dtype"]])
                    self.assertEqual(saved.shape, ported[name].shape)
                    self.assertFalse(np.isnan(saved).any())
                    self.assertFalse(np.isnan(ported[name]).any())
                    differ = np.flatnonzero(bits(saved) != bits(ported[name]))
                    self.assertTrue(differ.size == 0,
                                    f"{differ.size} of {saved.size} elements differ, first at linear index "
                                    f"{differ[:1]}: flashlab {saved.ravel()[differ[:3]]}, "
                                    f"port {ported[name].ravel()[differ[:3]]}")

    def test_suite_reaches_the_rare_paths(self):
        """The comparison above means something only if the inputs take the rare branches."""
        def rows(**match):
            return [r for r in self.rows if all(r[k] == v for k, v in match.items())]
        # fp16 subnormals (below 2^-14): flat's q = 1e-3 N(0, 1)
        q = self.saved(rows(dtype="fp16", distribution="flat")[0], "q")
        self.assertTrue(((q != 0) & (np.abs(q) < 2.0 ** -14)).any())
        # outliers: some elements took the N(0, 100) branch (without it, |x| > 6 has probability ~2e-9 per element)
        outliers = [np.abs(self.saved(r, n)).max() for r in rows(distribution="outliers") for n in INPUTS]
        self.assertGreater(max(outliers), 6.0)
        # ramp: K's channel 0 wrapped past the period (token 8192 is 0 again), rounded to fp16 above 2048
        k = self.saved(rows(distribution="ramp", seqlen_k=str(RAMP_PERIOD + 8))[0], "k")
        self.assertEqual(k[0, RAMP_PERIOD, 0, 0], 0.0)
        self.assertEqual(k[0, RAMP_PERIOD - 1, 0, 0], 4096.0)  # 4095.5 rounded to fp16 (spacing 2 above 2048)


def nearest_by_distance(x, precision, min_normal_exponent, max_finite):
    """An oracle for round to nearest even that shares no step with round_to: the two neighbours on the format's
    grid (spacing 2^(max(e, e_min) - (p - 1)) for |x| in [2^e, 2^(e+1))) and the exact distances to them."""
    magnitude = np.abs(x)
    exponent = np.maximum(np.frexp(magnitude)[1] - 1, min_normal_exponent)
    spacing = np.ldexp(1.0, exponent - (precision - 1))
    below = np.floor(magnitude / spacing) * spacing  # exact: scalings by powers of two and floor
    above = below + spacing
    to_below, to_above = magnitude - below, above - magnitude  # exact: both under one spacing, on x's grid
    below_even = np.fmod(below / spacing, 2.0) == 0
    nearest = np.where((to_below < to_above) | ((to_below == to_above) & below_even), below, above)
    nearest = np.where(nearest > max_finite, np.inf, nearest)
    return np.copysign(nearest, x)


class RoundTo(unittest.TestCase):
    """round_to against oracles: numpy's float64 -> float16 / float32 casts (direct round to nearest even), and for
    every format the distance oracle above on random values and on the ties between neighbours (where rounding bf16
    through float32 first would double-round)."""

    def random_values(self, rng, count):
        significand = np.ldexp(rng.integers(2 ** 52, 2 ** 53, size=count, dtype=np.int64).astype(np.float64), -52)
        exponent = rng.integers(-160, 140, size=count)
        return np.ldexp(significand, exponent) * rng.choice([-1.0, 1.0], size=count)

    def assert_bits_equal(self, x, expected, got):
        differ = np.flatnonzero(bits(expected) != bits(got))
        self.assertTrue(differ.size == 0, f"{x[differ[:5]]}: expected {expected[differ[:5]]}, port {got[differ[:5]]}")

    def test_matches_numpy_casts(self):
        x = self.random_values(np.random.default_rng(7), 200_000)
        edges = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, -65520.0, 2.0 ** -25, 3 * 2.0 ** -26,
                 2.0 ** -24 * 1.5, 2.0 ** -149, 2.0 ** -150, 3 * 2.0 ** -151, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
                 1 + 2.0 ** -24, 1 + 3 * 2.0 ** -24, 3.4028235677973366e38, 5e-324]
        x = np.concatenate([x, edges])
        for dtype, numpy_type in (("fp16", np.float16), ("fp32", np.float32)):
            with self.subTest(dtype=dtype), np.errstate(over="ignore"):
                self.assert_bits_equal(x, x.astype(numpy_type).astype(np.float64), fi.round_to(x.copy(), dtype))

    def test_matches_distance_oracle_with_ties(self):
        rng = np.random.default_rng(11)
        for dtype, (precision, min_normal_exponent, max_finite) in fi.FORMATS.items():
            with self.subTest(dtype=dtype):
                # grid points of the format (normal and subnormal), then the midpoints to their upper neighbours
                # and the doubles just beside those midpoints
                grid = fi.round_to(self.random_values(rng, 50_000), dtype)
                grid = grid[np.isfinite(grid) & (np.abs(grid) < max_finite)]
                exponent = np.maximum(np.frexp(np.abs(grid))[1] - 1, min_normal_exponent)
                half = np.ldexp(1.0, exponent - precision)
                middle = grid + np.copysign(half, grid)
                x = np.concatenate([self.random_values(rng, 50_000), middle, np.nextafter(middle, np.inf),
                                    np.nextafter(middle, -np.inf), [max_finite, -max_finite]])
                with np.errstate(over="ignore"):
                    expected = nearest_by_distance(x, precision, min_normal_exponent, max_finite)
                self.assert_bits_equal(x, expected, fi.round_to(x.copy(), dtype))

    def test_nan_passes(self):
        self.assertTrue(np.isnan(fi.round_to(np.array([np.nan]), "bf16")).all())


if __name__ == "__main__":
    unittest.main()
