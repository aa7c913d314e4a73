"""Tests of reports/compare.py, the figure of `flashlab compare --csv`: it draws every timed row, says so when no
row is timed, and refuses a file that is not a compare table."""

import csv
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from reports import compare  # noqa: E402

COLUMNS = ["key", "variant", "pass", "dtype", "seqlen_q", "head_dim", "causal", "status_a", "status_b", "time_a_ms",
           "time_b_ms", "time_ratio", "verdict", "err_o_ratio", "err_lse_ratio"]


def write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def row(n, ratio, verdict, err=1.0, status_b="ok"):
    return {"key": f"k{n}", "variant": "flash2", "pass": "fwd", "dtype": "bf16", "seqlen_q": str(n), "head_dim": "64",
            "causal": "0", "status_a": "ok", "status_b": status_b, "time_a_ms": "1", "time_b_ms": str(ratio),
            "time_ratio": "" if ratio is None else str(ratio), "verdict": verdict, "err_o_ratio": str(err),
            "err_lse_ratio": "1"}


class CompareFigure(unittest.TestCase):
    def test_draws_the_timed_rows(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.csv")
            write(path, [row(512, 0.9, "faster", 2.0), row(1024, 1.2, "slower"), row(2048, 1.0, "same"),
                         row(4096, None, "", status_b="error")])
            self.assertEqual(compare.main([path, "--out", os.path.join(d, "fig")]), 0)
            for name in ("compare.png", "compare.svg"):
                self.assertGreater(os.path.getsize(os.path.join(d, "fig", name)), 1000)
            # the same table gives the same bytes (the reports' determinism)
            first = Path(d, "fig", "compare.svg").read_bytes()
            self.assertEqual(compare.main([path, "--out", os.path.join(d, "fig")]), 0)
            self.assertEqual(Path(d, "fig", "compare.svg").read_bytes(), first)

    def test_nothing_timed_and_malformed_files_are_refused(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "e.csv")
            write(empty, [row(512, None, "", status_b="oom")])
            self.assertEqual(compare.main([empty]), 2)
            bad = os.path.join(d, "bad.csv")
            Path(bad).write_text("a,b\n1,2\n")
            self.assertEqual(compare.main([bad]), 2)
            self.assertEqual(compare.main([os.path.join(d, "missing.csv")]), 2)

    def test_runs_as_a_file_from_anywhere(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.csv")
            write(path, [row(512, 0.9, "faster")])
            done = subprocess.run([sys.executable, str(ROOT / "reports" / "compare.py"), path], cwd=d,
                                  capture_output=True, text=True)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertTrue(os.path.isfile(os.path.join(d, "compare.png")))


if __name__ == "__main__":
    unittest.main()
