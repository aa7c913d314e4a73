"""Tests of reports/ncu.py, the side-by-side tables of Nsight Compute exports: the metrics it reads, the duration's
unit, the instruction classes of SASS lines, and its refusals of exports it cannot read."""

import csv
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from reports import ncu  # noqa: E402
from reports.data import InputError  # noqa: E402


def write_raw(path, duration="2.5", unit="ms", drop=None, launches=1):
    names, units, values = ["ID", "Kernel Name"], ["", ""], ["0", "k"]
    for i, metric in enumerate(ncu.SUMMARY.values()):
        if metric == drop:
            continue
        names.append(metric)
        units.append(unit if metric == "gpu__time_duration.sum" else "")
        values.append(duration if metric == "gpu__time_duration.sum" else f"{1000 + i:,}")
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([names, units] + [values] * launches)


SOURCE_HEADER = ["Address", "Source", "Instructions Executed", "stall_wait", "stall_barrier", "stall_wait (Not Issued)"]
SOURCE_ROWS = [
    ["a0", "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ", "8", "1", "0", "1"],
    ["b0", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "8", "0", "9", "0"],
    ["c0", "MUFU.EX2 R29, R29", "100", "7", "0", "7"],
    ["d0", "FFMA R42, R42, UR10, R16", "50", "0", "0", "0"],
    ["e0", "FADD.FTZ R1, R2, R3", "50", "2", "0", "2"],
    ["f0", "ULOP3.LUT UR4, UR5, 0x3, URZ, 0xc0, !PT", "30", "0", "0", "0"],
    ["10", "R2UR UR6, R4", "5", "0", "0", "0"],
    ["20", "@!P0 BRA 0x7f34a37d37d0", "40", "3", "0", "3"],
    ["30", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR8+0x28000], R0", "40", "0", "0", "0"],
    ["40", "BAR.SYNC.DEFER_BLOCKING R2, R3", "4", "0", "5", "0"],
    ["50", "IMAD.MOV.U32 R1, RZ, RZ, R2", "12", "", "", ""],
    ["60", "", "", "", "", ""],
]


def write_source(path, rows=SOURCE_ROWS, header=SOURCE_HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["Kernel Name", "k"])
        w.writerow(header)
        w.writerows(rows)


class NcuTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def test_raw_metrics_and_duration_units(self):
        write_raw(self.path("ms.csv"), "2.5", "ms")
        write_raw(self.path("us.csv"), "858.048", "us")
        values = ncu.read_raw(self.path("ms.csv"))
        self.assertEqual(values["duration_ms"], 2.5)
        self.assertAlmostEqual(ncu.read_raw(self.path("us.csv"))["duration_ms"], 0.858048)
        index = list(ncu.SUMMARY).index("instructions")
        self.assertEqual(values["instructions"], 1000 + index)  # thousands separators removed

    def test_raw_refusals(self):
        write_raw(self.path("missing.csv"), drop="smsp__inst_executed.sum")
        write_raw(self.path("two.csv"), launches=2)
        write_raw(self.path("unit.csv"), unit="cycle")
        write_raw(self.path("text.csv"), duration="n/a")
        for name, words in (("missing.csv", "smsp__inst_executed.sum"), ("two.csv", "launch-count 1"),
                            ("unit.csv", "unit 'cycle'"), ("text.csv", "not a number"), ("absent.csv", "absent.csv")):
            with self.subTest(name), self.assertRaises(InputError) as caught:
                ncu.read_raw(self.path(name))
            self.assertIn(words, str(caught.exception))

    def test_opcode_classes(self):
        for line, kind in (("HGMMA.64x64x16.F32.BF16 R1", "hgmma"), ("WARPGROUP.ARRIVE", "warpgroup"),
                           ("MUFU.EX2 R1, R1", "mufu"), ("FMNMX.FTZ R1, R2, R3", "fp32"), ("UIADD3 UR1", "uniform"),
                           ("R2UR UR6, R4", "uniform"), ("@!P6 SYNCS.ARRIVE.TRANS64.A1T0 RZ", "control"),
                           ("@P0 BRA 0x10", "control"), ("BAR.ARV 0x2, 0x100", "control"),
                           ("F2FP.BF16.F32.PACK_AB R1", "other"), ("", None), ("@P0", None)):
            with self.subTest(line):
                self.assertEqual(ncu.opcode_class(line), kind)

    def test_source_counts_and_stalls_by_class(self):
        write_source(self.path("src.csv"))
        counts, samples = ncu.read_source(self.path("src.csv"))
        self.assertEqual(counts, {"hgmma": 8, "warpgroup": 8, "mufu": 100, "fp32": 100, "uniform": 35, "control": 84,
                                  "other": 12})
        self.assertEqual(samples["mufu"]["wait"], 7)
        self.assertEqual(samples["fp32"]["wait"], 2)
        self.assertEqual(samples["control"]["barrier"], 5)
        self.assertEqual(samples["warpgroup"]["barrier"], 9)
        self.assertNotIn("wait (Not Issued)", samples["mufu"])  # the not-issued subset is not counted twice

    def test_source_refusals(self):
        write_source(self.path("header.csv"), header=["Address", "Source", "Samples"])
        write_source(self.path("short.csv"), rows=[SOURCE_ROWS[0][:3]])
        write_source(self.path("empty.csv"), rows=[])
        for name, words in (("header.csv", "Instructions Executed"), ("short.csv", "3 fields"),
                            ("empty.csv", "no instructions")):
            with self.subTest(name), self.assertRaises(InputError) as caught:
                ncu.read_source(self.path(name))
            self.assertIn(words, str(caught.exception))

    def test_command_writes_both_tables(self):
        write_raw(self.path("a_raw.csv"), "1.5", "ms")
        write_raw(self.path("b_raw.csv"), "750", "us")
        write_source(self.path("a_src.csv"))
        out = self.path("out")
        done = subprocess.run([sys.executable, "-m", "reports.ncu", out, f"a={self.path('a_raw.csv')},"
                               f"{self.path('a_src.csv')}", f"b={self.path('b_raw.csv')}"],
                              cwd=ROOT, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        with open(os.path.join(out, "ncu_summary.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([r["name"] for r in rows], ["a", "b"])
        self.assertEqual([float(r["duration_ms"]) for r in rows], [1.5, 0.75])
        with open(os.path.join(out, "ncu_instruction_mix.csv"), newline="") as f:
            mix = list(csv.DictReader(f))
        self.assertEqual([r["class"] for r in mix], list(ncu.CLASSES))
        self.assertEqual({r["name"] for r in mix}, {"a"})
        self.assertEqual(next(r for r in mix if r["class"] == "mufu")["stall_wait"], "7")
        self.assertIn("| a | 1.5 |", done.stdout)

    def test_command_refuses_bad_spec_and_bad_file(self):
        for spec in ("nofile", "a=", "a=x.csv,y.csv,z.csv", f"a={self.path('absent.csv')}"):
            with self.subTest(spec):
                done = subprocess.run([sys.executable, "-m", "reports.ncu", self.path("out"), spec], cwd=ROOT,
                                      capture_output=True, text=True)
                self.assertEqual(done.returncode, 2)
                self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
                self.assertTrue(done.stderr.startswith("reports.ncu: "), done.stderr)


if __name__ == "__main__":
    unittest.main()
