"""Tests of reports/ncu_figure.py, the figure of reports.ncu's tables: it draws the pairs it is given, with or
without an instruction mix, and refuses unknown names, malformed pairs and tables it cannot read."""

import csv
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from reports import ncu, ncu_figure  # noqa: E402


def write_tables(folder, names, mix=True, drop=None):
    columns = ["name"] + [c for c in ncu.SUMMARY if c != drop]
    with open(os.path.join(folder, "ncu_summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for i, name in enumerate(names):
            values = {"duration_ms": 1.0 + i, "sm_active_cycles": 95.0, "elapsed_cycles": 100.0}
            w.writerow([name] + [values.get(c, 10.0 * (i + 1)) for c in columns[1:]])
    if mix:
        with open(os.path.join(folder, "ncu_instruction_mix.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "class", "instructions", "stall_samples", "stall_wait"])
            for name in names:
                for j, kind in enumerate(ncu.CLASSES):
                    w.writerow([name, kind, 1e6 * (j + 1), 10 * (j + 1), j])


class NcuFigureTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def run_figure(self, *args):
        return subprocess.run([sys.executable, "-m", "reports.ncu_figure", self.dir, *args], cwd=ROOT,
                              capture_output=True, text=True)

    def test_draws_the_pairs_with_and_without_a_mix(self):
        for mix in (True, False):
            with self.subTest(mix=mix):
                write_tables(self.dir, ["ncu_a", "ncu_b", "ncu_c"], mix=mix)
                done = self.run_figure("ncu_a:ncu_b", "ncu_c:ncu_a")
                self.assertEqual(done.returncode, 0, done.stderr)
                for name in ("ncu_compare.png", "ncu_compare.svg"):
                    path = os.path.join(self.dir, name)
                    self.assertGreater(os.path.getsize(path), 1000)
                    os.remove(path)

    def test_loads_values_and_the_mix(self):
        write_tables(self.dir, ["ncu_a", "ncu_b"])
        summary, mix = ncu_figure.load(self.dir)
        self.assertEqual(summary["ncu_b"]["duration_ms"], 2.0)
        self.assertEqual(mix["ncu_a"]["mufu"], (3e6, 30.0))
        self.assertAlmostEqual(dict(ncu_figure.PIPES)["SMs active"](summary["ncu_a"]), 95.0)

    def test_refusals(self):
        write_tables(self.dir, ["ncu_a", "ncu_b"])
        for args, words in ((["ncu_a:ncu_x"], "no profile named 'ncu_x'"), (["ncu_a"], "expected A:B"),
                            (["ncu_a:ncu_b:ncu_c"], "expected A:B")):
            with self.subTest(args=args):
                done = self.run_figure(*args)
                self.assertEqual(done.returncode, 2)
                self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
                self.assertIn(words, done.stderr)
        write_tables(self.dir, ["ncu_a", "ncu_b"], drop="xu_pipe_pct")
        done = self.run_figure("ncu_a:ncu_b")
        self.assertEqual(done.returncode, 2)
        self.assertIn("missing column 'xu_pipe_pct'", done.stderr)
        os.remove(os.path.join(self.dir, "ncu_summary.csv"))
        done = self.run_figure("ncu_a:ncu_b")
        self.assertEqual(done.returncode, 2)
        self.assertIn("ncu_summary.csv", done.stderr)


if __name__ == "__main__":
    unittest.main()
