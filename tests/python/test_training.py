"""experiments/training/train_llama.py (skipped without PyTorch and transformers).

The tiny preset trains from one initialisation on flashlab (variant cpu-standard) and on sdpa, both in float32: the
losses agree step by step (the same model and batches; the attention differs only in its summation order): within
1e-6 relative at the first step, within 1e-3 at every step (AdamW amplifies rounding a little); the loss falls; the
output files are complete. Then eager joins the same folder without losing the first two, a call with another config
is refused with the files unchanged, and bad arguments fail in one line with exit status 2. On a GPU (skipped without
CUDA): the tiny model on flash2 in bfloat16 beside sdpa and eager. The data: each row is BOS, a walk, the walk again,
then padding, the same for a seed, and a longer run starts with the same batches.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "training" / "train_llama.py"

try:
    import torch
    import transformers
except ImportError:  # the CPU CI has neither: skipped, and said so
    torch = transformers = None

STEPS = 12
# Step 0 runs the same weights on the same batch: the losses differ by the attention's summation order alone (a few
# float32 roundings). AdamW's early steps then amplify that into ~1e-5 relative (g / sqrt(v) turns gradients near
# zero into full-size steps of either sign): eager and sdpa differ as much as flashlab and sdpa do.
FIRST_STEP = 1e-6
EVERY_STEP = 1e-3


def load_script():
    spec = importlib.util.spec_from_file_location("train_llama", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, env=None):
    environment = dict(os.environ)
    if not os.environ.get("FLASHLAB_TEST_INSTALLED"):  # else: the installed package (tests/python/wheel_test.sh)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "python")] + [p for p in [environment.get("PYTHONPATH")] if p])
    environment.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                          timeout=900)


def read_losses(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    curves = {}
    for r in rows:
        curves.setdefault(r["impl"], []).append((int(r["step"]), float(r["loss"]), int(r["tokens"])))
    return rows, curves


@unittest.skipIf(transformers is None, "PyTorch or transformers is not installed")
class TrainingOnTheCpu(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = Path(cls.tmp.name) / "run"
        cls.first = run("--device", "cpu", "--impls", "flashlab,sdpa", "--steps", str(STEPS), "--out", str(cls.out))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_1_flashlab_and_sdpa_agree_and_learn(self):
        self.assertEqual(self.first.returncode, 0, self.first.stderr)
        _, curves = read_losses(self.out / "losses.csv")
        self.assertEqual(sorted(curves), ["flashlab", "sdpa"])
        for impl, points in curves.items():
            self.assertEqual([p[0] for p in points], list(range(STEPS)), impl)
        for (step, ours, tokens), (_, theirs, their_tokens) in zip(curves["flashlab"], curves["sdpa"]):
            tolerance = FIRST_STEP if step == 0 else EVERY_STEP
            self.assertLessEqual(abs(ours - theirs), tolerance * abs(theirs), f"step {step}")
            self.assertEqual(tokens, their_tokens)
        losses = [p[1] for p in curves["flashlab"]]
        self.assertLess(np.mean(losses[-3:]), losses[0] - 0.5, losses)  # ln(64) = 4.16 at the start

    def test_2_files_are_complete(self):
        self.assertEqual(self.first.returncode, 0, self.first.stderr)
        script = load_script()
        self.assertEqual(sorted(os.listdir(self.out)), ["losses.csv", "summary.csv", "summary.json"])  # no temp files
        rows, _ = read_losses(self.out / "losses.csv")
        self.assertEqual(list(rows[0]), list(script.LOSS_COLUMNS))
        self.assertTrue(all(int(r["tokens"]) > 0 for r in rows))
        with open(self.out / "summary.csv", newline="") as f:
            table = list(csv.DictReader(f))
        self.assertEqual([r["impl"] for r in table], ["flashlab", "sdpa"])
        self.assertEqual(list(table[0]), list(script.SUMMARY_COLUMNS))
        summary = json.loads((self.out / "summary.json").read_text())
        for key in ("config", "device", "versions", "git_commit", "date", "command", "runs"):
            self.assertIn(key, summary)
        datetime.fromisoformat(summary["date"])
        self.assertEqual(summary["versions"]["torch"], torch.__version__)
        self.assertEqual(summary["versions"]["transformers"], transformers.__version__)
        self.assertEqual(summary["config"]["steps"], STEPS)
        self.assertEqual(summary["config"]["preset"], "tiny")
        self.assertEqual(summary["device"]["type"], "cpu")
        warmup = script.PRESETS["tiny"]["warmup"]
        for r, row in zip(summary["runs"], table):
            self.assertEqual(r["status"], "ok")
            self.assertEqual(r["timed_steps"], STEPS - warmup)
            self.assertGreater(r["tokens_per_s"], 0)
            self.assertAlmostEqual(r["tokens_per_s"], r["timed_tokens"] / r["elapsed_s"])
            self.assertIsNone(r["peak_allocated_bytes"])  # not measured on the CPU: empty, not zero
            self.assertEqual(row["peak_allocated_bytes"], "")
            self.assertAlmostEqual(float(row["final_loss"]), r["final_loss"])
        self.assertEqual(summary["runs"][0]["variant"], "cpu-standard")

    def test_3_another_impl_joins_and_another_config_is_refused(self):
        self.assertEqual(self.first.returncode, 0, self.first.stderr)
        eager = run("--device", "cpu", "--impls", "eager", "--steps", str(STEPS), "--out", str(self.out))
        self.assertEqual(eager.returncode, 0, eager.stderr)
        _, curves = read_losses(self.out / "losses.csv")
        self.assertEqual(sorted(curves), ["eager", "flashlab", "sdpa"])
        for (step, ours, _), (_, theirs, _) in zip(curves["eager"], curves["sdpa"]):
            tolerance = FIRST_STEP if step == 0 else EVERY_STEP
            self.assertLessEqual(abs(ours - theirs), tolerance * abs(theirs), f"step {step}")
        summary = json.loads((self.out / "summary.json").read_text())
        self.assertEqual([r["impl"] for r in summary["runs"]], ["flashlab", "sdpa", "eager"])
        before = {name: (self.out / name).read_bytes() for name in os.listdir(self.out)}
        other = run("--device", "cpu", "--impls", "sdpa", "--steps", str(STEPS + 1), "--out", str(self.out))
        self.assertEqual(other.returncode, 2)
        self.assertIn("another config (differs in steps)", other.stderr)
        self.assertEqual(len(other.stderr.strip().splitlines()), 1, other.stderr)
        self.assertEqual(before, {name: (self.out / name).read_bytes() for name in os.listdir(self.out)})

    def test_bad_arguments_fail_in_one_line(self):
        with tempfile.TemporaryDirectory() as d:
            cases = [(["--impls", "flashlab,flash"], {}, "unknown implementation flash"),
                     (["--impls", "sdpa,sdpa"], {}, "names an implementation twice"),
                     (["--steps", "5", "--warmup", "5"], {}, "--warmup 5"),
                     (["--variant", "no-such-variant"], {}, "not in this libflashlab"),
                     (["--variant", "flash2"], {}, "--variant flash2"),
                     ([], {"FLASHLAB_LIBRARY": str(Path(d) / "missing" / "libflashlab.so")}, "libflashlab not found")]
            if not torch.cuda.is_available():
                cases.append((["--device", "cuda"], {}, "no CUDA device"))
            for args, env, message in cases:
                with self.subTest(args=args, env=env):
                    out = Path(d) / "out"
                    device = [] if "--device" in args else ["--device", "cpu"]
                    result = run(*device, *args, "--out", str(out), env=env)
                    self.assertEqual(result.returncode, 2, result.stderr)
                    self.assertIn(message, result.stderr)
                    self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
                    self.assertFalse(out.exists())  # nothing written

    @unittest.skipUnless(torch is not None and torch.cuda.is_available(), "no CUDA device")
    def test_gpu_flash2_bf16(self):
        # the GPU path of the real run (autocast, pinned copies, fused AdamW, memory statistics) on the tiny model:
        # every implementation runs, memory is measured, and at the first step (same weights, same batch) the losses
        # differ by bfloat16 attention alone
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "gpu"
            result = run("--device", "cuda", "--preset", "tiny", "--dtype", "bf16", "--variant", "flash2", "--steps",
                         "6", "--warmup", "2", "--out", str(out))
            self.assertEqual(result.returncode, 0, result.stderr)
            summary = json.loads((out / "summary.json").read_text())
            self.assertEqual([r["impl"] for r in summary["runs"]], ["flashlab", "sdpa", "eager"])
            for r in summary["runs"]:
                self.assertEqual(r["status"], "ok", r)
                self.assertGreater(r["peak_allocated_bytes"], 0)
                self.assertGreater(r["tokens_per_s"], 0)
            _, curves = read_losses(out / "losses.csv")
            first = {impl: points[0][1] for impl, points in curves.items()}
            self.assertLessEqual(abs(first["flashlab"] - first["sdpa"]), 1e-2 * first["sdpa"], first)

    def test_data(self):
        script = load_script()
        preset = script.PRESETS["tiny"]
        ids, lengths, entropy = script.make_data(preset, 3, seed=5)
        again = script.make_data(preset, 3, seed=5)
        np.testing.assert_array_equal(ids, again[0])
        np.testing.assert_array_equal(lengths, again[1])
        self.assertFalse(np.array_equal(ids, script.make_data(preset, 3, seed=6)[0]))
        longer = script.make_data(preset, 5, seed=5)  # step s's batch depends on (seed, s) alone
        np.testing.assert_array_equal(longer[0][:3], ids)
        np.testing.assert_array_equal(longer[1][:3], lengths)
        self.assertEqual(longer[2], entropy)
        self.assertEqual(ids.shape, (3, preset["batch"], preset["seqlen"]))
        self.assertTrue(0 < entropy < np.log(preset["successors"]))
        for row, n in zip(ids.reshape(-1, preset["seqlen"]), lengths.reshape(-1)):
            self.assertTrue(preset["min_len"] <= n <= preset["seqlen"])
            self.assertEqual(row[0], script.BOS)
            self.assertTrue((row[n:] == script.PAD).all())
            body = row[1:n]
            self.assertTrue((body >= 2).all())
            half = (len(body) + 1) // 2
            np.testing.assert_array_equal(body[half:], body[:len(body) - half])  # the walk again


if __name__ == "__main__":
    unittest.main()
