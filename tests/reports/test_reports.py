"""Tests of reports/ (python3 -m unittest discover -s tests/reports -t . from the repository root).

The fixture run fixtures/memory_scaling/ is written by fixtures/make_fixture.py: standard attention with a
workspace exactly proportional to N^2 that runs out of memory from N = 32768, flash2 with a workspace exactly
proportional to N, CPU rows without memory or traffic, and one unsupported row. figure2 (the FlashAttention
paper's Figure 2) is tested on a run of fa_figure2 that the tests write themselves (fig2_rows). The error figure
and tables are tested in test_numerics.py, which uses the helpers here.
"""

import contextlib
import csv
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUN_DIR = FIXTURES / "memory_scaling"
SCALING_FIGURES = ("memory", "memory_device", "traffic")  # skipped where memory and traffic are not measured
FIGURE_NAMES = SCALING_FIGURES + ("speed",)

sys.path.insert(0, str(ROOT))
from reports import data, figure2, figures, scaling, style  # noqa: E402
from reports.cli import main  # noqa: E402
from reports.fit import fit_power_law, fit_window, loglog_slope  # noqa: E402


def harness_columns(text):
    """The column names harness/src/columns.cpp writes: its string literals, and the verification columns it
    builds as "err_" + tensor + "_" + metric from lists of literals."""
    literals = set(re.findall(r'"([a-z0-9_]+)"', text))
    written = set(literals)
    if re.search(r'"err_"\s*\)?\s*\+', text):
        written |= {f"err_{t}_{m}" for t in literals & set(data.TENSORS) for m in literals}
    return written


def run_modules(runs):
    """python3 -m reports for each (args, hash seed), each in its own process (its own string-hash seed), the
    processes side by side; their CompletedProcess."""
    processes = []
    for args, hash_seed in runs:
        env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
        processes.append(subprocess.Popen([sys.executable, "-m", "reports", *map(str, args)], cwd=ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def run_main(args):
    """main() in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path, columns, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(text, heading):
    """Rows (lists of cells) of the first table after `heading` in a Markdown text."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip().strip("|").split("|")])
    return rows[2:]  # without the header and the rule


def output_files(folder):
    """The files under an output folder, as relative paths, sorted."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def png_chunks(path):
    data_ = Path(path).read_bytes()
    assert data_[:8] == b"\x89PNG\r\n\x1a\n", path
    chunks, i = [], 8
    while i < len(data_):
        (n,) = struct.unpack(">I", data_[i:i + 4])
        chunks.append((data_[i + 4:i + 8].decode("ascii"), data_[i + 8:i + 8 + n]))
        i += 12 + n
    return chunks


class ReportOfFixture(unittest.TestCase):
    """Two runs of the command on the fixture, in separate processes, into different folders."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="reports-test-")
        cls.out = [os.path.join(cls.tmp, "first"), os.path.join(cls.tmp, "second", "nested")]
        cls.runs = run_modules([([RUN_DIR, "--out", out], seed) for out, seed in zip(cls.out, (1, 2))])
        report = os.path.join(cls.out[0], "report.md")
        cls.report = Path(report).read_text(encoding="utf-8") if os.path.exists(report) else ""

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_runs_and_writes_the_files(self):
        for run in self.runs:
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertEqual(run.stderr, "")
        for name in FIGURE_NAMES:
            png = os.path.join(self.out[0], f"{name}.png")
            svg = os.path.join(self.out[0], f"{name}.svg")
            self.assertEqual(png_chunks(png)[0][0], "IHDR")
            self.assertTrue(ET.parse(svg).getroot().tag.endswith("svg"))
            self.assertIn(f"]({name}.png)", self.report)
            self.assertIn(f"]({name}.svg)", self.report)
        self.assertNotIn("skipped", self.report)

    def test_two_runs_are_byte_identical(self):
        first, second = (sorted(os.listdir(d)) for d in self.out)
        self.assertEqual(first, second)
        self.assertEqual(first, sorted([f"{n}.{e}" for n in FIGURE_NAMES for e in ("png", "svg")]
                                       + ["report.md", "tables"]))
        self.assertEqual(output_files(self.out[0]), output_files(self.out[1]))
        for name in output_files(self.out[0]):
            a = Path(self.out[0], name).read_bytes()
            b = Path(self.out[1], name).read_bytes()
            self.assertTrue(a == b, f"{name} differs between two runs")

    def test_captions_state_device_and_commit(self):
        captions = [line for line in self.report.splitlines() if line.startswith("[SVG](")]
        self.assertEqual(len(captions), len(FIGURE_NAMES))
        for line in captions:  # run.json: device.name and the first 12 characters of git_commit
            self.assertTrue(line.endswith(" Run: NVIDIA H100 80GB HBM3, commit 76ef99e2c4d1."), line)

    def test_no_error_figure_nor_tables_without_errors(self):
        # The fixture's verification columns are those of an older harness, and empty: no error figure, no line.
        self.assertFalse(os.path.exists(os.path.join(self.out[0], "error.png")))
        self.assertNotIn("Error vs N", self.report)
        self.assertNotIn("## Numerical error", self.report)
        self.assertNotIn("`error`", self.report)

    def test_files_carry_no_date_and_no_path(self):
        for name in FIGURE_NAMES:
            chunks = png_chunks(os.path.join(self.out[0], f"{name}.png"))
            kinds = [kind for kind, _ in chunks]
            self.assertNotIn("tIME", kinds)
            texts = [body for kind, body in chunks if kind in ("tEXt", "iTXt", "zTXt")]
            self.assertEqual(texts, [b"Software\x00" + style.SOFTWARE.encode()])
            svg = Path(self.out[0], f"{name}.svg").read_text(encoding="utf-8")
            self.assertNotIn("<dc:date>", svg)
            self.assertIn(style.SOFTWARE, svg)
            self.assertNotIn(self.tmp, svg)
        self.assertNotIn(self.tmp, self.report)
        self.assertNotIn(str(ROOT), self.report)
        for name in output_files(self.out[0]):
            if name.endswith(".tex"):
                text = Path(self.out[0], name).read_text(encoding="utf-8")
                self.assertNotIn(self.tmp, text)
                self.assertNotIn(str(ROOT), text)

    def test_provenance(self):
        run = json.loads((RUN_DIR / "run.json").read_text(encoding="utf-8"))
        for key in ("suite", "run_id", "command", "git_commit", "suite_file", "suite_hash", "seed",
                    "flops_convention", "started", "finished"):
            self.assertIn(str(run[key]), self.report, key)
        for key in ("name", "sm_count", "l2_bytes", "memory_bytes", "compute_capability", "driver_version",
                    "runtime_version"):
            self.assertIn(f"| {key} | `{run['device'][key]}`", self.report, key)
        for key in ("clocks_before", "clocks_after"):
            self.assertIn(json.dumps(run["device"][key], sort_keys=True), self.report, key)

    def test_status_counts_include_the_oom_rows(self):
        rows = read_csv(RUN_DIR / "results.csv")
        table = {r[0]: r[1:] for r in markdown_table(self.report, "## Rows by status")}
        statuses = ["ok", "oom", "unsupported", "error"]
        for variant in sorted({r["variant"] for r in rows}):
            expected = [sum(1 for r in rows if r["variant"] == variant and r["status"] == s) for s in statuses]
            self.assertEqual(table[variant], [str(n) for n in expected + [sum(expected)]], variant)
        self.assertEqual(table["standard"][1], "8")  # 2 passes x 2 dtypes x N in {32768, 65536}
        self.assertEqual(table["all"], ["67", "8", "1", "0", "76"])
        not_ok = markdown_table(self.report, "### Rows not ok")
        oom = [r for r in not_ok if r[0] == "oom"]
        self.assertEqual(len(oom), 8)  # the reason names the bytes asked for, so one line per N
        self.assertEqual(sorted({r[5] for r in oom}), ["32K", "64K"])
        self.assertIn(["unsupported", "flash2", "fwd", "fp32", "64", "256",
                       "flash2 supports dtypes fp16, bf16 (not fp32)"], not_ok)

    def test_slopes_printed_in_the_report(self):
        table = markdown_table(self.report, "`memory`:")
        self.assertEqual(len(table), 8)  # 2 passes x (standard, flash2) x (fp16, bf16)
        for panel, line, measured, model in table:
            expected = "2.00" if line.startswith("standard") else "1.00"
            self.assertTrue(measured.startswith(expected + " ("), (panel, line, measured))
            self.assertTrue(model.startswith(expected + " ("), (panel, line, model))


class FromAnywhere(unittest.TestCase):

    def test_the_folder_runs_outside_the_repository(self):
        with tempfile.TemporaryDirectory(prefix="reports-anywhere-") as cwd:
            out = os.path.join(cwd, "report")
            done = subprocess.run([sys.executable, str(ROOT / "reports"), str(RUN_DIR), "--out", out], cwd=cwd,
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertTrue(os.path.isfile(os.path.join(out, "report.md")))


class Fitting(unittest.TestCase):

    def test_slopes_of_the_fixture(self):
        results = data.load_results(str(RUN_DIR / "results.csv"))
        seen = set()
        gpu_rows = [r for r in data.plotted_rows(results) if r["device"] == "cuda"]
        for (variant, pass_, dtype), rows in data.group_by(gpu_rows, ("variant", "pass", "dtype")):
            ns, ys, merged = data.points(rows, data.column("workspace_peak_bytes"))
            fit = fit_power_law(ns, ys)
            self.assertIsNotNone(fit)
            self.assertEqual(merged, 0)
            expected = {"standard": 2.0, "flash2": 1.0}[variant]
            self.assertAlmostEqual(fit.slope, expected, delta=0.01, msg=(variant, pass_, dtype))
            seen.add(variant)
        self.assertEqual(seen, {"standard", "flash2"})

    def test_power_laws(self):
        ns = [2 ** k for k in range(8, 17)]
        self.assertAlmostEqual(fit_power_law(ns, [3.0 * n ** 1.5 for n in ns]).slope, 1.5, places=9)
        # A linear term beside N^2: the fit uses the large-N end, where N^2 dominates (1.91 over all points).
        ys = [n * n + 200.0 * n for n in ns]
        fit = fit_power_law(ns, ys)
        self.assertEqual((fit.n_lo, fit.n_hi, fit.points), (4096, 65536, 5))
        self.assertAlmostEqual(fit.slope, 2.0, delta=0.02)
        self.assertLess(loglog_slope(ns, ys)[0], 1.95)

    def test_window(self):
        self.assertEqual(fit_window([256, 512]), [])
        self.assertIsNone(fit_power_law([256, 512], [1.0, 2.0]))
        self.assertEqual(fit_window([256, 512, 1024]), [0, 1, 2])
        self.assertEqual(fit_window([2 ** k for k in range(8, 17)]), [4, 5, 6, 7, 8])
        self.assertEqual(fit_window([1, 2, 4, 8, 1024]), [2, 3, 4])  # never fewer than 3 points


class Malformed(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="reports-test-")
        self.columns = list(read_csv(RUN_DIR / "results.csv")[0].keys())
        self.rows = read_csv(RUN_DIR / "results.csv")
        shutil.copy(RUN_DIR / "run.json", self.dir)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def assert_fails(self, *needles):
        rc, out, err = run_main([self.dir])
        self.assertEqual(rc, 2)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        for needle in needles:
            self.assertIn(needle, err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "report")))

    def test_missing_column(self):
        write_csv(os.path.join(self.dir, "results.csv"), [c for c in self.columns if c != "status"], self.rows)
        self.assert_fails("results.csv", "missing required column 'status'")

    def test_missing_columns(self):
        kept = [c for c in self.columns if c not in ("seqlen_q", "dtype")]
        write_csv(os.path.join(self.dir, "results.csv"), kept, self.rows)
        self.assert_fails("results.csv", "'dtype'", "'seqlen_q'")

    def test_missing_results_csv(self):
        self.assert_fails(os.path.join(self.dir, "results.csv"), "no such file")

    def test_field_not_a_number(self):
        self.rows[3]["workspace_peak_bytes"] = "12 MiB"
        write_csv(os.path.join(self.dir, "results.csv"), self.columns, self.rows)
        self.assert_fails("results.csv", "line 5", "'workspace_peak_bytes'", "12 MiB")

    def test_wrong_field_count(self):
        path = os.path.join(self.dir, "results.csv")
        write_csv(path, self.columns, self.rows)
        lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
        lines[2] = lines[2].rstrip("\n") + ",extra\n"
        Path(path).write_text("".join(lines), encoding="utf-8")
        self.assert_fails("results.csv", "line 3")

    def test_run_json_not_json(self):
        write_csv(os.path.join(self.dir, "results.csv"), self.columns, self.rows)
        Path(self.dir, "run.json").write_text("{\"suite\": ", encoding="utf-8")
        self.assert_fails("run.json", "not valid JSON")


class Tolerant(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="reports-test-")
        self.rows = read_csv(RUN_DIR / "results.csv")
        self.columns = list(self.rows[0].keys())

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_cpu_run_skips_figures_with_a_note(self):
        write_csv(os.path.join(self.dir, "results.csv"), self.columns,
                  [r for r in self.rows if r["device"] == "cpu"])
        run = json.loads((RUN_DIR / "run.json").read_text(encoding="utf-8"))
        run["device"] = None
        run["host"] = {"cpu_model": "AMD EPYC 9654 96-Core Processor", "cores": 192}
        run["git_commit"] += "+dirty"
        del run["finished"]
        Path(self.dir, "run.json").write_text(json.dumps(run), encoding="utf-8")
        out = os.path.join(self.dir, "report")
        os.makedirs(out)
        Path(out, "traffic.png").write_bytes(b"left by an older run")
        rc, _, err = run_main([self.dir])
        self.assertEqual(rc, 0, err)
        # the CPU rows were timed: only the speed figure is drawn
        self.assertEqual(sorted(os.listdir(out)), ["report.md", "speed.png", "speed.svg", "tables"])
        report = Path(out, "report.md").read_text(encoding="utf-8")
        for name in SCALING_FIGURES:
            notes = [line for line in report.splitlines() if f"(`{name}`): skipped" in line]
            self.assertEqual(len(notes), 1, name)
            self.assertIn("not measured in this run", notes[0])
        self.assertIn("Device: none (a CPU-only run).", report)
        self.assertIn(" Run: CPU (AMD EPYC 9654 96-Core Processor), commit 76ef99e2c4d1 (dirty).\n", report)
        self.assertIn("- **finished**: (not recorded)", report)
        self.assertEqual(markdown_table(report, "## Rows by status")[-1], ["all", "3", "0", "0", "0", "3"])

    def test_a_figure_of_too_many_problems_is_skipped_with_the_reason(self):
        # a random-problem suite: every row its own problem, so a scaling figure would get a panel per row
        base = next(r for r in self.rows if r["variant"] == "flash2" and r["status"] == "ok")
        rows = []
        for i in range(scaling.MAX_PANELS + 12):
            row = dict(base)
            row["head_dim"] = row["head_dim_v"] = str(8 * (i + 1))
            row["key"] = f"{base['key']}#{i}"
            row["row_index"] = str(i)
            rows.append(row)
        write_csv(os.path.join(self.dir, "results.csv"), self.columns, rows)
        shutil.copy(RUN_DIR / "run.json", os.path.join(self.dir, "run.json"))
        rc, _, err = run_main([self.dir])
        self.assertEqual(rc, 0, err)
        report = Path(self.dir, "report", "report.md").read_text(encoding="utf-8")
        notes = [line for line in report.splitlines() if "(`memory`): skipped" in line]
        self.assertEqual(len(notes), 1, report)
        self.assertIn(f"{scaling.MAX_PANELS + 12} panels", notes[0])
        self.assertFalse(Path(self.dir, "report", "memory.png").exists())

    def test_incomplete_last_line_and_repeated_header(self):
        path = os.path.join(self.dir, "results.csv")
        write_csv(path, self.columns, self.rows[:40])
        text = Path(path).read_text(encoding="utf-8")
        header = text.splitlines(keepends=True)[0]
        write_csv(os.path.join(self.dir, "shard.csv"), self.columns, self.rows[40:])
        shard = Path(self.dir, "shard.csv").read_text(encoding="utf-8")
        Path(path).write_text(text + shard + "flash2,fwd,fp1", encoding="utf-8")  # a crash mid-row
        self.assertTrue(shard.startswith(header))
        rc, _, err = run_main([self.dir, "--out", os.path.join(self.dir, "out")])
        self.assertEqual(rc, 0, err)
        report = Path(self.dir, "out", "report.md").read_text(encoding="utf-8")
        self.assertIn("ignored an incomplete last line", report)
        self.assertIn("run.json not found", report)
        captions = [line for line in report.splitlines() if line.startswith("[SVG](")]
        self.assertTrue(captions)
        for line in captions:
            self.assertTrue(line.endswith(" Run: device not recorded, commit not recorded."), line)
        self.assertEqual(markdown_table(report, "## Rows by status")[-1], ["all", "67", "8", "1", "0", "76"])

    def test_setting_columns(self):
        def results(rows):
            return data.Results("results.csv", tuple(rows[0]), rows)

        base = dict(variant="flash2", status="ok", dtype="fp16", head_dim=64, causal="0", batch=1)
        rows = [dict(base, seqlen_q=n, pass_="fwd") for n in (256, 512)]
        for r in rows:
            r["pass"] = r.pop("pass_")
        self.assertEqual(data.setting_columns(results(rows)), [])
        # batch follows N (a fixed `tokens` axis): it tells no two rows apart
        coupled = [dict(r, batch=4096 // r["seqlen_q"]) for r in rows]
        self.assertEqual(data.setting_columns(results(coupled)), [])
        causal = rows + [dict(r, causal="1") for r in rows]
        self.assertEqual(data.setting_columns(results(causal)), ["causal"])
        both = causal + [dict(r, batch=8) for r in causal]
        self.assertEqual(data.setting_columns(results(both)), ["causal", "batch"])


class Figures(unittest.TestCase):

    def test_speed_lines_join_only_the_same_problem(self):
        rows = []
        for n in (256, 512, 1024):
            for heads_kv, tflops in (("4", 100.0), ("1", 10.0)):
                rows.append(dict(variant="flash2", status="ok", dtype="fp16", head_dim=64, causal="0", seqlen_q=n,
                                 heads="4", heads_kv=heads_kv, tflops=tflops, verified_heads="all"))
                rows[-1]["pass"] = "fwd"
        # one problem at a single N: a marker, no line
        rows.append(dict(rows[0], seqlen_q=97, heads="2", heads_kv="2", tflops=50.0))
        results = data.Results("results.csv", tuple(rows[0]), rows)
        with style.fixed_style():
            drawn = figures.speed(results, figures.Context.of(results, None))
        lines = [line for ax in drawn.figure.axes for line in ax.get_lines() if len(line.get_xdata())]
        drawn_points = sorted((tuple(line.get_xdata()), tuple(line.get_ydata())) for line in lines)
        # before: one line of medians (55 TFLOP/s at each N, the single-N problem merged in as a fourth point)
        self.assertEqual(drawn_points, [((97,), (50.0,)), ((256, 512, 1024), (10.0, 10.0, 10.0)),
                                        ((256, 512, 1024), (100.0, 100.0, 100.0))])
        self.assertEqual(drawn.notes, [])

    def test_oom_rows_are_marked_at_the_top(self):
        results = data.load_results(str(RUN_DIR / "results.csv"))
        run = data.load_run(str(RUN_DIR / "run.json"))
        with style.fixed_style():
            drawn = figures.memory(results, figures.Context.of(results, run))
        marked = []
        for ax in drawn.figure.axes:
            for line in ax.get_lines():
                if line.get_marker() == "x":
                    marked.append((ax.get_title(), tuple(line.get_xdata())))
                    self.assertTrue(all(y > 0.8 for y in line.get_ydata()))  # axes fraction: the top
                    self.assertEqual(line.get_color(), style.OOM_COLOR)
        self.assertEqual(sorted(marked), [("forward + backward, d=64", (32768, 65536)),
                                          ("forward, d=64", (32768, 65536))])

    def test_registry(self):
        names = [f.name for f in figures.FIGURES]
        self.assertEqual(names[:len(FIGURE_NAMES)], list(FIGURE_NAMES))
        self.assertEqual(len(set(names)), len(names))
        with self.assertRaises(ValueError):
            figures.figure("memory", "again", "", (), ())(lambda results, context: None)


class Contract(unittest.TestCase):

    def test_reports_reads_only_columns_the_harness_writes(self):
        source = ROOT / "harness" / "src" / "columns.cpp"
        if not source.exists():
            self.skipTest("harness/src/columns.cpp not present")
        written = harness_columns(source.read_text(encoding="utf-8"))
        read = set(data.REQUIRED_COLUMNS) | set(data.INT_COLUMNS) | set(data.NUMBER_COLUMNS)
        read |= set(data.SETTING_COLUMNS) | set(data.ERROR_COLUMNS) | set(data.VERIFY_COLUMNS) | {"key", "reason"}
        for spec in figures.FIGURES:
            read |= set(spec.columns) | set(spec.measured)
        self.assertEqual(sorted(read - written), [])
        fixture_columns = list(read_csv(RUN_DIR / "results.csv")[0].keys())
        self.assertEqual(sorted(c for c in fixture_columns if not c.startswith("err_") and c not in written), [])
        numerics_columns = list(read_csv(FIXTURES / "numerics" / "results.csv")[0].keys())
        self.assertEqual(sorted(c for c in numerics_columns if c not in written), [])

    def test_fixture_is_what_the_generator_writes(self):
        spec = importlib.util.spec_from_file_location("make_fixture", FIXTURES / "make_fixture.py")
        generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generator)
        with tempfile.TemporaryDirectory(prefix="reports-test-") as tmp:
            generator.write(os.path.join(tmp, "memory_scaling"))
            generator.write_numerics(os.path.join(tmp, "numerics"))
            for run in ("memory_scaling", "numerics"):
                for name in ("results.csv", "run.json"):
                    self.assertEqual(Path(tmp, run, name).read_bytes(), (FIXTURES / run / name).read_bytes(),
                                     f"{run}/{name}")




class Peers(unittest.TestCase):
    """peers.csv beside results.csv joins the figures (speed) and the report's tables."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="reports-test-")
        self.rows = read_csv(RUN_DIR / "results.csv")
        self.columns = list(self.rows[0].keys())
        write_csv(os.path.join(self.dir, "results.csv"), self.columns, self.rows)
        shutil.copy(RUN_DIR / "run.json", self.dir)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_peer_rows_join_the_report(self):
        timed = [r for r in self.rows if r["status"] == "ok" and r["tflops"]]
        self.assertTrue(timed)
        peer = dict(timed[0], variant="torch-flash", key="torch-flash " + timed[0]["key"], tflops="123.0",
                    materializes="0")
        write_csv(os.path.join(self.dir, "peers.csv"), self.columns, [peer])
        out = os.path.join(self.dir, "report")
        rc, _, err = run_main([self.dir, "--out", out])
        self.assertEqual(rc, 0, err)
        self.assertTrue(os.path.exists(os.path.join(out, "speed.png")))
        report = Path(out, "report.md").read_text(encoding="utf-8")
        self.assertIn("torch-flash", report)

    def test_malformed_peers_file_is_named(self):
        Path(self.dir, "peers.csv").write_text("variant,pass\nx,fwd\n", encoding="utf-8")
        rc, _, err = run_main([self.dir, "--out", os.path.join(self.dir, "report")])
        self.assertEqual(rc, 2)
        self.assertIn("peers.csv", err)


# --- figure2: the FlashAttention paper's Figure 2 ---------------------------------------------------------

def fixture_columns():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURES / "make_fixture.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator.COLUMNS


FIG2_FWD_FLOPS = 4 * 64 * 16 * 1024 * 1024 * 64  # B H N^2 d
# (variant, pass, status, median/p20/p80 ms, DRAM read/write, L2 read/write, model min/variant in GB, reason):
# a hand-made stand-in for `flashlab run experiments/fa_figure2.toml`, K/V re-reads in L2 falling as 1/br.
FIG2_ROWS = [
    ("standard", "fwd", "ok", (12.5, 12.4, 12.7), (12.0, 4.4, 13.0, 5.0), (0.54, 17.7), ""),
    ("standard", "fwdbwd", "ok", (41.7, 41.5, 42.0), (30.1, 10.2, 45.0, 15.0), (1.07, 40.0), ""),
    ("flash2", "fwd", "ok", (1.90, 1.88, 1.93), (0.41, 0.14, 2.13, 0.14), (0.54, 2.42), ""),
    ("flash2", "fwdbwd", "ok", (7.30, 7.25, 7.41), (3.1, 1.3, 9.5, 2.4), (1.07, 8.9), ""),
    ("flash2[br=32,bc=64]", "fwd", "ok", (2.91, 2.88, 2.95), (0.42, 0.14, 8.98, 0.14), (0.54, 8.86), ""),
    ("flash2[br=64,bc=64]", "fwd", "ok", (2.20, 2.18, 2.24), (0.41, 0.14, 4.69, 0.14), (0.54, 4.56), ""),
    ("flash2[br=128,bc=64]", "fwd", "ok", (1.90, 1.88, 1.93), (0.41, 0.14, 2.54, 0.14), (0.54, 2.42), ""),
    ("flash2[bc=128, br=128]", "fwd", "ok", (1.95, 1.93, 1.99), (0.41, 0.14, 2.55, 0.14), (0.54, 2.42), ""),
    ("flash2[br=256,bc=64]", "fwd", "ok", (2.05, 2.02, 2.10), (0.40, 0.14, 1.47, 0.14), (0.54, 1.34), ""),
    ("flash2[br=256,bc=128]", "fwd", "unsupported", None, None, None, "the tile needs 192 KiB of shared memory"),
]


def fig2_rows(columns):
    rows = []
    for index, (variant, pass_, status, times, traffic, model, reason) in enumerate(FIG2_ROWS):
        r = {c: "" for c in columns}
        r.update(key=f"{variant}/{pass_}/bf16/b64h16/q1024/d64/c0", suite="fa_figure2", run_id="fixture",
                 row_index=index, variant=variant, status=status, reason=reason, dtype="bf16", batch=64, heads=16,
                 heads_kv=16, seqlen_q=1024, seqlen_k=1024, head_dim=64, head_dim_v=64, causal=0,
                 window_left=-1, window_right=-1, materializes=int(variant == "standard"), device="cuda",
                 flops=FIG2_FWD_FLOPS * (1 if pass_ == "fwd" else 3.5))
        r["pass"] = pass_
        if times:
            r.update(time_median_ms=times[0], time_p20_ms=times[1], time_p80_ms=times[2])
            r.update(zip(("dram_read_bytes", "dram_write_bytes", "l2_read_bytes", "l2_write_bytes"),
                         (int(gb * 1e9) for gb in traffic)))
            r.update(bytes_model_min=int(model[0] * 1e9), bytes_model_variant=int(model[1] * 1e9))
        rows.append(r)
    # Another problem (N = 2048): not the block-size sweep's, so in neither panel nor table.
    rows.append(dict(rows[1], key="standard/fwdbwd/bf16/b64h16/q2048/d64/c0", seqlen_q=2048, seqlen_k=2048,
                     time_median_ms=166.0))
    return rows


class Figure2(unittest.TestCase):
    """figure2 from a synthetic fa_figure2 run, twice (separate processes, different hash seeds)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="reports-test-")
        cls.run_dir = os.path.join(cls.tmp, "fa_figure2")
        os.makedirs(cls.run_dir)
        columns = fixture_columns()
        write_csv(os.path.join(cls.run_dir, "results.csv"), columns, fig2_rows(columns))
        cls.out = [os.path.join(cls.tmp, "first"), os.path.join(cls.tmp, "second")]
        cls.runs = run_modules([([cls.run_dir, "--out", out], seed) for out, seed in zip(cls.out, (3, 4))])
        cls.report = Path(cls.out[0], "report.md").read_text(encoding="utf-8")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_files_written_and_byte_identical(self):
        for run in self.runs:
            self.assertEqual(run.returncode, 0, run.stderr)
        for out in self.out:
            self.assertIn("figure2.png", os.listdir(out))
            self.assertIn("figure2.svg", os.listdir(out))
        self.assertEqual(png_chunks(os.path.join(self.out[0], "figure2.png"))[0][0], "IHDR")
        self.assertTrue(ET.parse(os.path.join(self.out[0], "figure2.svg")).getroot().tag.endswith("svg"))
        self.assertIn("](figure2.png)", self.report)
        for name in ("figure2.png", "figure2.svg", "report.md"):
            self.assertEqual(Path(self.out[0], name).read_bytes(), Path(self.out[1], name).read_bytes(), name)
        self.assertNotIn(self.tmp, self.report)

    def test_block_table(self):
        table = markdown_table(self.report, "against the block size")
        header = ["br", "bc", "variant", "DRAM R+W (GB)", "L2 R+W (GB)", "model: minimum (GB)", "model: variant (GB)",
                  "runtime median (ms)", "p20 (ms)", "p80 (ms)"]
        lines = self.report[self.report.index("against the block size"):].splitlines()
        self.assertEqual([c.strip() for c in next(l for l in lines if l.startswith("|")).strip("|").split("|")],
                         header)
        self.assertEqual([(r[0], r[1]) for r in table],
                         [("32", "64"), ("64", "64"), ("128", "64"), ("128", "128"), ("256", "64"),
                          ("(default)", "(default)")])
        self.assertEqual(table[0][2:], ["`flash2[br=32,bc=64]`", "0.560", "9.12", "0.540", "8.86", "2.91", "2.88",
                                        "2.95"])
        self.assertEqual(table[3][2], "`flash2[bc=128, br=128]`")
        self.assertEqual(table[4][3:5], ["0.540", "1.61"])
        self.assertEqual(table[5][2:4], ["`flash2`", "0.550"])

    def test_comparison_table(self):
        table = {(r[0], r[1]): r[2:] for r in markdown_table(self.report, "Standard against the flash variants")}
        self.assertEqual(list(table), [("`standard`", "fwd"), ("`flash2`", "fwd"), ("`standard`", "fwdbwd"),
                                       ("`flash2`", "fwdbwd")])
        # GFLOPs, DRAM, L2, model min, model variant, median, p20, p80
        self.assertEqual(table[("`standard`", "fwdbwd")], ["962", "40.3", "60.0", "1.07", "40.0", "41.7", "41.5",
                                                           "42.0"])
        self.assertEqual(table[("`flash2`", "fwdbwd")], ["962", "4.40", "11.9", "1.07", "8.90", "7.30", "7.25",
                                                         "7.41"])
        self.assertEqual(table[("`flash2`", "fwd")][0], "275")
        self.assertNotIn("166", self.report)  # the row of another problem

    def test_rows_not_ok_listed_not_drawn(self):
        section = self.report[self.report.index("Not drawn (not ok)"):]
        self.assertIn("- `flash2[br=256,bc=128]` fwd: unsupported (the tile needs 192 KiB of shared memory)", section)
        self.assertIn("re-read once per query block", self.report)
        self.assertIn("falls as 1/br", self.report)

    def test_figure_points(self):
        results = data.load_results(os.path.join(self.run_dir, "results.csv"))
        with style.fixed_style():
            drawn = figure2.figure2(results, figures.Context.of(results, None))
        blocks = drawn.figure.axes[1]
        xs = sorted({x for line in blocks.get_lines() for x in line.get_xdata()})
        self.assertEqual(xs, [32, 64, 128, 256])  # the unsupported br=256, bc=128 row is not drawn
        self.assertEqual([t.get_text() for t in blocks.get_xticklabels()], ["32", "64", "128", "256"])
        l2 = [line for line in blocks.get_lines() if line.get_marker() == "s" and line.get_linestyle() == "-"]
        self.assertEqual(len(l2), 1)
        self.assertEqual(list(l2[0].get_ydata()), [9.12, 4.83, 2.68, 1.61])  # bc = 64; bc = 128 open
        open_ = [line for line in blocks.get_lines() if line.get_marker() == "s" and line.get_linestyle() == "None"]
        self.assertEqual([list(line.get_xdata()) for line in open_], [[128]])


class Figure2Parsing(unittest.TestCase):

    def test_block_sizes(self):
        cases = {
            "flash2[br=128,bc=64]": (128, 64),
            "flash2[bc=64,br=32]": (32, 64),
            " flash2[ br = 256 , bc = 128 ] ": (256, 128),
            "flash2[br=64]": (64, None),
            "flash1[br=16,bc=16]": (16, 16),
            "flash2[br=064,bc=64]": (64, 64),
            "flash2": None,
            "standard": None,
            "flash2[deterministic=1]": None,
            "flash2[br=64,deterministic=1]": None,  # more than the tile differs
            "flash2[bc=64]": None,
            "flash2[br=0,bc=64]": None,
            "flash2[br=-64,bc=64]": None,
            "flash2[br=1.5,bc=64]": None,
            "flash2[br=abc]": None,
            "flash2[br]": (1, None),  # an option without a value means 1, as the harness reads it
            "flash2[br=64,bc=]": None,
            "flash2[br=64": None,
        }
        for name, expected in cases.items():
            self.assertEqual(figure2.block_sizes(name), expected, name)

    def test_split_variant(self):
        self.assertEqual(data.split_variant("flash2"), ("flash2", {}))
        self.assertEqual(data.split_variant("flash2[br=128,bc=64]"), ("flash2", {"br": "128", "bc": "64"}))
        self.assertEqual(data.split_variant("flash2[deterministic]"), ("flash2", {"deterministic": "1"}))
        self.assertEqual(data.split_variant("flash2[br=64"), ("flash2[br=64", {}))

    def test_numbers(self):
        self.assertEqual([figure2.number(v) for v in (None, 962.07, 40.3, 4.4, 0.5369, 0.05, 1234.5)],
                         ["–", "962", "40.3", "4.40", "0.537", "0.050", "1234"])

    def test_not_drawn_without_block_rows(self):
        with tempfile.TemporaryDirectory(prefix="reports-test-") as tmp:
            columns = fixture_columns()
            rows = [r for r in fig2_rows(columns) if "[" not in r["variant"]]  # the left panel's rows only
            write_csv(os.path.join(tmp, "results.csv"), columns, rows)
            out = os.path.join(tmp, "report")
            os.makedirs(out)
            Path(out, "figure2.png").write_bytes(b"left by an older run")
            rc, _, err = run_main([tmp, "--out", out])
            self.assertEqual(rc, 0, err)
            self.assertFalse(any(name.startswith("figure2") for name in os.listdir(out)))
            report = Path(out, "report.md").read_text(encoding="utf-8")
            self.assertNotIn("figure2", report)
            self.assertNotIn("Figure 2", report)


if __name__ == "__main__":
    unittest.main()
