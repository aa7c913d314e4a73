"""Tests of reports/training.py, the figure of experiments/training/train_llama.py, on a synthetic run: what it draws
(a curve per implementation, the bars with their values, a failed run named by its status, the footer with device,
commit and date), the same bytes from the same files, the centred moving average, and malformed input refused in
one line with exit status 2."""

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from reports import style, training  # noqa: E402

STEPS = 300
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_run(folder, failed_eager=False):
    """A run as train_llama.py writes it: losses falling from ln(512) with noise, three implementations."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs, rows = [], []
    for i, impl in enumerate(("flashlab", "sdpa", "eager")):
        failed = failed_eager and impl == "eager"
        losses = [0.6 + 5.6 * math.exp(-s / 40) + 0.05 * math.sin(7 * s + i) for s in range(STEPS)]
        run = dict(impl=impl, attn_implementation=impl, variant="flash2" if impl == "flashlab" else "",
                   status="error: OutOfMemoryError: CUDA out of memory" if failed else "ok", steps=STEPS)
        if not failed:
            rows += [dict(impl=impl, step=s, loss=repr(v), tokens=10000 + s) for s, v in enumerate(losses)]
            run.update(timed_steps=STEPS - 10, tokens_per_s=[412345.0, 301000.0, 150000.0][i],
                       peak_allocated_bytes=[3 * 2 ** 30, int(3.5 * 2 ** 30), 14 * 2 ** 30][i],
                       final_loss=losses[-1], final_loss_mean10=sum(losses[-10:]) / 10)
        runs.append(run)
    with open(folder / training.LOSSES_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["impl", "step", "loss", "tokens"])
        writer.writeheader()
        writer.writerows(rows)
    summary = dict(device=dict(type="cuda", name="NVIDIA H200", memory_bytes=150 * 10 ** 9), git_commit=COMMIT,
                   date="2026-12-01T10:00:00+00:00",
                   config=dict(model=dict(vocab=512, hidden=768, layers=8, heads=12, kv_heads=4, head_dim=64),
                               data=dict(seqlen=1024, min_len=256, batch=16, markov_entropy_nats=0.868),
                               dtype="bf16", steps=STEPS),
                   runs=runs)
    (folder / training.SUMMARY_FILE).write_text(json.dumps(summary))
    return folder


def texts(fig):
    found = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        found += [t.get_text() for t in ax.texts] + [ax.get_title()]
        found += [t.get_text() for t in ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend:
            found += [t.get_text() for t in legend.get_texts()]
    return found


class TrainingFigure(unittest.TestCase):
    def test_draws_every_implementation(self):
        with tempfile.TemporaryDirectory() as d:
            curves, summary = training.load(str(write_run(d, failed_eager=True)))
            with style.fixed_style():
                fig = training.draw(curves, summary)
                training.style.footer(fig, training.caption(summary))
            loss_axes = fig.axes[0]
            self.assertEqual(loss_axes.get_yscale(), "log")
            labels = [t.get_text() for t in loss_axes.get_legend().get_texts()]
            self.assertEqual(len(labels), 3)  # flashlab, sdpa and the entropy level; eager failed: no curve
            self.assertTrue(labels[0].startswith("flashlab (flash2), mean of the last 10 steps "))
            self.assertTrue(labels[1].startswith("sdpa, mean of the last 10 steps "))
            self.assertIn("Markov entropy 0.868", labels[2])
            # raw and smoothed line per curve, the entropy level; the smoothing window: 300 / 30 = 10, made odd
            self.assertEqual(len(loss_axes.get_lines()), 5)
            self.assertIn("11-step centred mean", loss_axes.get_title())
            drawn = texts(fig)
            self.assertIn("412.3K", drawn)             # tokens/s of flashlab
            self.assertIn("3 GiB", drawn)              # its peak memory
            self.assertNotIn("14 GiB", drawn)          # eager failed: no bar
            self.assertEqual(sum(" error" == t for t in drawn), 2)  # eager's status in both bar panels
            self.assertIn("NVIDIA H200, commit 0123456789ab, 2026-12-01", drawn)
            self.assertIn("eager", drawn)              # still named in the bar panels
            difference = fig.axes[1]
            self.assertEqual(difference.get_ylabel(), "loss − sdpa loss")

    def test_same_files_same_bytes(self):
        with tempfile.TemporaryDirectory() as d:
            run = write_run(Path(d) / "run")
            first = training.make_figure(str(run), str(Path(d) / "a"))
            second = training.make_figure(str(run), str(Path(d) / "b"))
            self.assertEqual([os.path.basename(f) for f in first], ["training.png", "training.svg"])
            for a, b in zip(first, second):
                self.assertGreater(os.path.getsize(a), 10000)
                self.assertEqual(Path(a).read_bytes(), Path(b).read_bytes(), a)
            self.assertEqual(Path(first[0]).read_bytes()[:8], b"\x89PNG\r\n\x1a\n")

    def test_moving_average(self):
        self.assertEqual(training.moving_average([1, 2, 3, 4, 5], 3), [1.5, 2, 3, 4, 4.5])
        self.assertEqual(training.moving_average([1, float("nan"), 3], 3), [1, 2, 3])
        self.assertEqual(training.moving_average([4, 2], 1), [4, 2])

    def test_command_and_malformed_input(self):
        def command(*args):
            return subprocess.run([sys.executable, "-m", "reports.training", *args], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)

        with tempfile.TemporaryDirectory() as d:
            run = write_run(Path(d) / "run")
            ok = command(str(run))
            self.assertEqual(ok.returncode, 0, ok.stderr)
            self.assertTrue((run / "training.png").is_file() and (run / "training.svg").is_file())
            missing = command(str(Path(d) / "nothing"))
            self.assertEqual(missing.returncode, 2)
            self.assertIn("summary.json: cannot be read", missing.stderr)
            self.assertEqual(len(missing.stderr.strip().splitlines()), 1)
            with open(run / training.LOSSES_FILE, "a") as f:
                f.write("sdpa,300,not-a-number,10\n")
            bad = command(str(run))
            self.assertEqual(bad.returncode, 2)
            self.assertIn(f"line {3 * STEPS + 2}: step or loss does not parse", bad.stderr)
            self.assertEqual(len(bad.stderr.strip().splitlines()), 1)


if __name__ == "__main__":
    unittest.main()
