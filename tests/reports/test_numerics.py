"""Tests of the numerical-error part of reports/ (the figure `error`, the hollow "not verified" points of `speed`,
the RMSE and bound-tightness tables) and of the tables' LaTeX copies.

The fixture run fixtures/numerics/ is written by fixtures/make_fixture.py (rows_numerics): standard and flash2,
fp16 and bf16, N = 256..2048, forward and forward+backward on normal inputs and the forward at fp16 on outlier
inputs; flash2 fwdbwd bf16 N=1024 fails its check on dQ, flash2 fwdbwd fp16 N=2048 is an error row, and
flash2 fwd fp16 N=4096 was not verified. Expected values are computed here from the CSV, not by reports/.
"""

import os
import re
import shutil
import statistics
import sys
import tempfile
import unittest
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NUMERICS_DIR = FIXTURES / "numerics"
MEMORY_DIR = FIXTURES / "memory_scaling"

sys.path.insert(0, str(ROOT))
from reports import data, figures, numerics, style, tables  # noqa: E402
from tests.reports.test_reports import read_csv, run_main, run_modules, write_csv  # noqa: E402

TENSORS = ("o", "lse", "dq", "dk", "dv")




def two_digits(value):
    """2 significant digits, scientific: the format the report's error tables promise (3.2e-4)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def markdown_tables(text):
    """{tex file: (header, rows)} of every Markdown table followed by its 'LaTeX: [tables/X.tex](...)' link."""
    lines = text.splitlines()
    found = {}
    for i, line in enumerate(lines):
        match = re.fullmatch(r"LaTeX: \[(tables/[^\]]+\.tex)\]\(\1\)", line)
        if not match:
            continue
        end = i - 1
        while not lines[end].startswith("|"):
            end -= 1
        start = end
        while start > 0 and lines[start - 1].startswith("|"):
            start -= 1
        cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]] for row in lines[start:end + 1]]
        found[match.group(1)] = (cells[0], cells[2:])
    return found


def latex_rows(text):
    """(header, rows) of a booktabs table: the line between \\toprule and \\midrule, and those down to
    \\bottomrule, split into cells."""
    lines = text.splitlines()
    top, mid, bottom = lines.index(r"\toprule"), lines.index(r"\midrule"), lines.index(r"\bottomrule")
    split = [[c.strip() for c in re.split(r"(?<!\\)&", line.removesuffix(r"\\").strip())]
             for line in lines[top + 1:bottom] if line != r"\midrule"]
    assert mid == top + 2, "one header line"
    return split[0], split[1:]


def plain_markdown(cell):
    """A Markdown cell as plain text: no code fences, no bold, no escapes."""
    cell = re.sub(r"``?([^`]*)``?", r"\1", cell).replace("**", "")
    return cell.replace("\\|", "|").replace("\\\\", "\\")


def plain_latex(cell):
    """A LaTeX cell as plain text, numbers $a\\times10^{b}$ back to aeb."""
    cell = re.sub(r"\$(-?[0-9.]+)\\times10\^\{(-?[0-9]+)\}\$", r"\1e\2", cell)
    cell = re.sub(r"\\text(?:tt|bf)\{((?:[^{}]|\\\{|\\\})*)\}", r"\1", cell)
    for escaped, plain in ((r"\textbackslash{}", "\\"), (r"\textasciitilde{}", "~"), (r"\textasciicircum{}", "^"),
                           (r"\textless{}", "<"), (r"\textgreater{}", ">"), (r"\textbar{}", "|"),
                           (r"$\times$", "×"), (r"$\infty$", "∞"), (r"$\lambda$", "λ"), ("---", "—"),
                           ("--", "–")):
        cell = cell.replace(escaped, plain)
    return re.sub(r"\\([&%$#_{}])", r"\1", cell)


def assert_tables_match(test, report_dir):
    """Every table of report.md is followed by a link to its .tex file, the files in tables/ are those linked, and
    each holds a booktabs table with the same header and cells. Returns the tables found."""
    text = Path(report_dir, "report.md").read_text(encoding="utf-8")
    found = markdown_tables(text)
    rules = [line for line in text.splitlines() if re.fullmatch(r"\| (---:?)( \| ---:?)* \|", line)]
    test.assertEqual(len(found), len(rules))
    on_disk = sorted("tables/" + p for p in os.listdir(os.path.join(report_dir, "tables")))
    test.assertEqual(sorted(found), on_disk)
    for link, (header, rows) in found.items():
        tex = Path(report_dir, link).read_text(encoding="utf-8")
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            test.assertEqual(tex.count(rule), 1, (link, rule))
        test.assertIn(r"\begin{tabular}", tex)
        tex_header, tex_rows = latex_rows(tex)
        test.assertEqual([plain_latex(c) for c in tex_header], [plain_markdown(c) for c in header], link)
        test.assertEqual([[plain_latex(c) for c in r] for r in tex_rows],
                         [[plain_markdown(c) for c in r] for r in rows], link)
    return found


def load():
    results = data.load_results(str(NUMERICS_DIR / "results.csv"))
    return results, figures.Context.of(results, data.load_run(str(NUMERICS_DIR / "run.json")))


def panels(drawn):
    """{title: axes} of a figure's panels (the legend row has no title)."""
    return {ax.get_title(): ax for ax in drawn.figure.axes if ax.get_title()}


class NumericsReport(unittest.TestCase):
    """The command on the numerics fixture, twice, in separate processes (different hash seeds)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="reports-test-")
        cls.out = [os.path.join(cls.tmp, "first"), os.path.join(cls.tmp, "second")]
        os.makedirs(os.path.join(cls.out[0], "tables"))
        Path(cls.out[0], "tables", "stale.tex").write_text("left by an older run", encoding="utf-8")
        cls.runs = run_modules([([NUMERICS_DIR, "--out", out], seed) for out, seed in zip(cls.out, (5, 6))])
        cls.report = Path(cls.out[0], "report.md").read_text(encoding="utf-8")
        cls.rows = read_csv(NUMERICS_DIR / "results.csv")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_files_written_and_byte_identical(self):
        for run in self.runs:
            self.assertEqual(run.returncode, 0, run.stderr)
            self.assertEqual(run.stderr, "")
        files = sorted(str(p.relative_to(self.out[0])) for p in Path(self.out[0]).rglob("*") if p.is_file())
        self.assertIn("error.png", files)
        self.assertIn("error.svg", files)
        self.assertIn("](error.png)", self.report)
        self.assertNotIn("tables/stale.tex", files)  # an older run's table is removed
        for name in ("rmse_fp16_normal", "rmse_bf16_normal", "rmse_fp16_fa3_outliers", "bound_tightness",
                     "rows_by_status", "rows_not_ok", "device"):
            self.assertIn(f"tables/{name}.tex", files)
        for name in files:
            self.assertEqual(Path(self.out[0], name).read_bytes(), Path(self.out[1], name).read_bytes(), name)

    def test_every_table_has_its_latex_copy_with_the_same_cells(self):
        found = assert_tables_match(self, self.out[0])
        self.assertIn("tables/bound_tightness.tex", found)

    def test_latex_numbers_in_scientific_notation(self):
        tex = Path(self.out[0], "tables", "rmse_fp16_normal.tex").read_text(encoding="utf-8")
        numbers = re.findall(r"\$(-?[0-9.]+)\\times10\^\{(-?[0-9]+)\}\$", tex)
        self.assertEqual(len(numbers), 4)  # baseline, upcast, standard, flash2
        self.assertIn(r"\texttt{flash2}", tex)

    def rmse_table(self, dtype, distribution):
        heading = f"RMSE of O against the fp64 reference, {dtype}, inputs {distribution},"
        text = self.report[self.report.index(heading):]
        link = re.search(r"LaTeX: \[(tables/[^\]]+)\]", text).group(1)
        return markdown_tables(self.report)[link], link

    def test_rmse_tables_hold_the_medians(self):
        for dtype, distribution in (("fp16", "normal"), ("bf16", "normal"), ("fp16", "fa3_outliers")):
            (header, rows), link = self.rmse_table(dtype, distribution)
            self.assertEqual(link, f"tables/rmse_{dtype}_{distribution}.tex")
            self.assertEqual(header, [dtype.upper(), "Baseline (standard attention)", "Baseline, fp32 upcast",
                                      "`standard` (N×N)", "`flash2`"])
            # Every problem here has a fwd row: the fwd rows are the ones counted (fwdbwd rows compute the same O).
            fwd = [r for r in self.rows if r["status"] == "ok" and r["pass"] == "fwd" and r["dtype"] == dtype
                   and r["distribution"] == distribution and r["err_o_rmse"]]  # not the unverified row
            by_n = {}
            for r in fwd:
                if r["err_o_baseline_rmse"]:
                    by_n[r["seqlen_q"]] = float(r["err_o_baseline_rmse"])
            upcast = {r["seqlen_q"]: float(r["err_o_upcast_rmse"]) for r in fwd}
            expected = [statistics.median(by_n.values()), statistics.median(upcast.values())]
            counts = [len(by_n), len(upcast)]
            for variant in ("standard", "flash2"):
                values = [float(r["err_o_rmse"]) for r in fwd if r["variant"] == variant]
                expected.append(statistics.median(values))
                counts.append(len(values))
            self.assertEqual(rows[0], ["RMSE"] + [two_digits(v) for v in expected], (dtype, distribution))
            self.assertEqual(rows[1], ["rows"] + [str(n) for n in counts])
            self.assertEqual(counts, [4, 4, 4, 4])
        # flash2 more accurate than the baseline, as FlashAttention-3's Table 3 finds (1.6x in the fixture)
        (_, rows), _ = self.rmse_table("fp16", "normal")
        self.assertLess(float(rows[0][4]), float(rows[0][1]))
        self.assertIn("Median over the rows (N = 256–2048, d = 64)", self.report)

    def test_tightness_table(self):
        (header, rows) = markdown_tables(self.report)["tables/bound_tightness.tex"]
        self.assertEqual(header[:3] + header[8:10], ["variant", "dtype", "tensor", "rows", "bound_pass = 0"])
        table = {(r[0], r[1], r[2]): r for r in rows}
        self.assertEqual(len(table), 2 * 2 * 5)
        for variant, dtype, tensor in (("flash2", "bf16", "dq"), ("standard", "fp16", "o"),
                                       ("flash2", "fp16", "lse")):
            ok = [r for r in self.rows if r["status"] == "ok" and r["variant"] == variant and r["dtype"] == dtype
                  and r[f"err_{tensor}_tightness"]]
            det = [float(r[f"err_{tensor}_tightness"]) for r in ok]
            prob = [float(r[f"err_{tensor}_tightness_prob"]) for r in ok]
            fails = sum(1 for r in ok if r[f"err_{tensor}_bound_pass"] == "0")
            label = {"o": "O", "lse": "LSE", "dq": "dQ"}[tensor]
            row = table[(f"`{variant}`", dtype, label)]
            self.assertEqual(row[3:7], [two_digits(statistics.median(det)), two_digits(min(det)),
                                        two_digits(statistics.median(prob)), two_digits(min(prob))])
            self.assertEqual(row[8:10], [str(len(ok)), str(fails)])
        self.assertEqual(table[("`flash2`", "bf16", "dQ")][9], "1")  # the failed row is above its bound
        self.assertLess(float(table[("`flash2`", "bf16", "dQ")][4]), 1.0)
        self.assertEqual(table[("`standard`", "fp16", "O")][8], "12")  # 4 fwd + 4 fwdbwd + 4 outlier rows
        self.assertIn("λ = 2.26", self.report)

    def test_failed_and_unverified_rows_listed(self):
        section = self.report[self.report.index("Failed (red x):"):self.report.index("## Numerical error")]
        self.assertIn("- `flash2` fwdbwd fp16 N=2048 d=64 causal=0 distribution=normal: error (CUDA error", section)
        self.assertRegex(section, r"- `flash2` fwdbwd bf16 N=1024 .*: verify_pass 0: dQ \(max abs [0-9.e-]+, "
                                  r"baseline .*rule failed, bound failed\)")
        self.assertIn("Not verified (hollow markers):", section)
        self.assertIn("- `flash2` fwd fp16 N=4096 d=64 causal=0 distribution=normal: none: N > --verify-max-n 2048",
                      section)


class ErrorFigure(unittest.TestCase):
    """The figure's matplotlib objects, drawn in-process from the numerics fixture."""

    @classmethod
    def setUpClass(cls):
        cls.results, cls.context = load()
        with style.fixed_style():
            cls.drawn = numerics.error(cls.results, cls.context)
        cls.panels = panels(cls.drawn)
        cls.rows = read_csv(NUMERICS_DIR / "results.csv")

    def test_panels(self):
        expected = set()
        for tensor in ("O", "LSE"):
            for setting in ("forward, d=64, distribution=fa3_outliers", "forward, d=64, distribution=normal",
                            "forward + backward, d=64, distribution=normal"):
                expected.add(f"{tensor}, {setting}")
        for tensor in ("dQ", "dK", "dV"):
            expected.add(f"{tensor}, forward + backward, d=64, distribution=normal")
        self.assertEqual(set(self.panels), expected)
        ax = self.panels["O, forward, d=64, distribution=normal"]
        self.assertEqual(ax.get_yscale(), "log")
        self.assertEqual(ax.get_xscale(), "log")
        self.assertEqual(ax.xaxis.get_transform().base, 2)

    def lines(self, title, linestyle, color=None):
        return [line for line in self.panels[title].get_lines()
                if line.get_linestyle() == linestyle and (color is None or line.get_color() == color)
                and line.get_transform() == self.panels[title].transData]

    def test_lines_of_a_panel(self):
        title = "O, forward + backward, d=64, distribution=normal"
        flash, standard = self.context.colors["flash2"], self.context.colors["standard"]
        measured = self.lines(title, "-", flash)
        fp16 = [line for line in measured if line.get_marker() == style.DTYPE_MARKERS["fp16"]]
        self.assertEqual(len(fp16), 1)
        rows = sorted((r for r in self.rows if r["variant"] == "flash2" and r["pass"] == "fwdbwd"
                       and r["dtype"] == "fp16" and r["status"] == "ok"), key=lambda r: int(r["seqlen_q"]))
        self.assertEqual(list(fp16[0].get_xdata()), [256, 512, 1024])  # N = 2048 is the error row
        self.assertEqual(list(fp16[0].get_ydata()), [float(r["err_o_max_abs"]) for r in rows])
        # one measured line, one dashed and one dash-dot bound per (variant, dtype); a baseline (dotted) for
        # flash2 only (a materializing row has none); one thin grey floor per (variant, dtype)
        self.assertEqual(len([l for l in self.lines(title, "-") if l.get_marker() in ("o", "^")]), 4)
        self.assertEqual(len(self.lines(title, "--")), 4)
        self.assertEqual(len(self.lines(title, "-.")), 4)
        self.assertEqual({l.get_color() for l in self.lines(title, ":")}, {flash})
        self.assertEqual(len(self.lines(title, ":")), 2)
        floors = self.lines(title, "-", style.FLOOR_GRAY)
        self.assertEqual(len(floors), 4)
        self.assertTrue(all(l.get_linewidth() < 1.0 for l in floors))
        bound = [l for l in self.lines(title, "--", standard)]
        self.assertTrue(all(max(l.get_ydata()) > 1e-3 for l in bound))

    def test_failed_points_marked(self):
        red = [line for ax in self.panels.values() for line in ax.get_lines() if line.get_marker() == "x"]
        self.assertTrue(all(line.get_color() == style.OOM_COLOR for line in red))
        # at its value: the dQ of flash2 fwdbwd bf16 N=1024, which failed
        failed = [r for r in self.rows if r["verify_pass"] == "0"]
        self.assertEqual(len(failed), 1)
        dq = self.panels["dQ, forward + backward, d=64, distribution=normal"]
        at_value = [l for l in dq.get_lines() if l.get_marker() == "x" and l.get_transform() == dq.transData]
        self.assertEqual([(list(l.get_xdata()), list(l.get_ydata())) for l in at_value],
                         [([1024], [float(failed[0]["err_dq_max_abs"])])])
        # on a track at the top: the error row (flash2 fwdbwd fp16 N=2048), in every forward + backward panel
        for title, ax in self.panels.items():
            track = [l for l in ax.get_lines() if l.get_marker() == "x" and l.get_transform() != ax.transData]
            if "forward + backward" in title:
                self.assertEqual([list(l.get_xdata()) for l in track], [[2048]], title)
                self.assertTrue(all(y > 0.8 for l in track for y in l.get_ydata()))
            else:
                self.assertEqual(track, [], title)
        # the O panel of that pass is not marked at a value: the failed row's O passed
        o = self.panels["O, forward + backward, d=64, distribution=normal"]
        self.assertFalse([l for l in o.get_lines() if l.get_marker() == "x" and l.get_transform() == o.transData])

    def test_unverified_points_marked(self):
        for title, ax in self.panels.items():
            hollow = [l for l in ax.get_lines() if l.get_markerfacecolor() == "none"]
            if title in ("O, forward, d=64, distribution=normal", "LSE, forward, d=64, distribution=normal"):
                self.assertEqual([list(l.get_xdata()) for l in hollow], [[4096]], title)
                self.assertEqual(hollow[0].get_color(), style.UNVERIFIED_GRAY)
                self.assertEqual(hollow[0].get_marker(), style.DTYPE_MARKERS["fp16"])
                self.assertTrue(hollow[0].get_ydata()[0] > 0.8)  # axes fraction: a track
            else:
                self.assertEqual(hollow, [], title)

    def test_legend_explains_the_styles(self):
        legend = [ax for ax in self.drawn.figure.axes if not ax.get_title()][0].get_legend()
        labels = [t.get_text() for t in legend.get_texts()]
        self.assertEqual(labels, ["flash2", "standard (N×N)", "fp16", "bf16", "max abs error",
                                  "baseline (standard, dtype)", "floor of the rule", "deterministic bound",
                                  "probabilistic bound (λ = 2.26)", "failed", "not verified"])

    def test_settings_split_panels(self):
        # The fp16 forward rows of two distributions at the same N are two panels, not one merged line.
        self.assertIn("distribution", self.context.settings)
        self.assertEqual(self.drawn.notes, [])


class OneColumnLegend(unittest.TestCase):
    """The error figure of one panel column (the fixture's forward rows on normal inputs): its legend, whose labels
    name the bounds, was wider than the figure in 3 * 1 columns, cut at the figure's edges, and in the SVG
    constrained layout gave up with "axes sizes collapsed to zero"."""

    def draw(self):
        results, _ = load()
        results = data.Results("results.csv", results.columns,
                               [r for r in results.rows if r["pass"] == "fwd" and r["distribution"] == "normal"])
        context = figures.Context.of(results, data.load_run(str(NUMERICS_DIR / "run.json")))
        with style.fixed_style():
            drawn = numerics.error(results, context)
            self.assertEqual({ax.get_title() for ax in drawn.figure.axes if ax.get_title()},
                             {"O, forward, d=64", "LSE, forward, d=64"})
            style.footer(drawn.figure, context.stamp)
            with tempfile.TemporaryDirectory(prefix="reports-test-") as out, warnings.catch_warnings():
                warnings.simplefilter("error")  # "constrained_layout not applied" fails the test
                style.save(drawn.figure, out, "error")
                drawn.figure.canvas.draw()
        return drawn.figure

    def test_legend_within_the_figure_and_no_layout_warning(self):
        fig = self.draw()
        renderer = fig.canvas.get_renderer()
        legend = [ax for ax in fig.axes if not ax.get_title()][0].get_legend()
        box, page = legend.get_window_extent(renderer), fig.bbox
        self.assertTrue(box.x0 >= page.x0 and box.x1 <= page.x1 and box.y0 >= page.y0 and box.y1 <= page.y1,
                        (box, page))
        for ax in fig.axes:
            if ax.get_title():  # the panels keep their width (the layout squeezed them to make room)
                self.assertGreater(ax.get_window_extent(renderer).width, 0.6 * style.PANEL_SIZE[0] * fig.dpi)


class SpeedMarksUnverified(unittest.TestCase):

    def test_hollow_points_and_legend(self):
        results, context = load()
        with style.fixed_style():
            drawn = figures.speed(results, context)
        forward = panels(drawn)["forward, d=64, non-causal"]
        hollow = [l for l in forward.get_lines() if l.get_markerfacecolor() == "none"]
        self.assertEqual([list(l.get_xdata()) for l in hollow], [[4096]])
        legend = [ax for ax in drawn.figure.axes if not ax.get_title()][0].get_legend()
        self.assertIn("not verified", [t.get_text() for t in legend.get_texts()])

    def test_no_hollow_points_when_all_verified(self):
        results = data.load_results(str(MEMORY_DIR / "results.csv"))
        with style.fixed_style():
            drawn = figures.speed(results, figures.Context.of(results, None))
        self.assertFalse([l for ax in drawn.figure.axes for l in ax.get_lines() if l.get_markerfacecolor() == "none"])
        legend = [ax for ax in drawn.figure.axes if not ax.get_title()][0].get_legend()
        self.assertNotIn("not verified", [t.get_text() for t in legend.get_texts()])


class OldFile(unittest.TestCase):

    def test_report_without_the_verification_columns(self):
        rows = read_csv(MEMORY_DIR / "results.csv")
        columns = [c for c in rows[0] if not c.startswith("err_") and c not in data.VERIFY_COLUMNS]
        with tempfile.TemporaryDirectory(prefix="reports-test-") as tmp:
            write_csv(os.path.join(tmp, "results.csv"), columns, rows)
            shutil.copy(MEMORY_DIR / "run.json", tmp)
            out = os.path.join(tmp, "report")
            os.makedirs(out)
            Path(out, "error.png").write_bytes(b"left by an older run")
            rc, _, err = run_main([tmp, "--out", out])
            self.assertEqual(rc, 0, err)
            files = sorted(os.listdir(out))
            self.assertEqual(files, sorted([f"{n}.{e}" for n in ("memory", "memory_device", "traffic", "speed")
                                            for e in ("png", "svg")] + ["report.md", "tables"]))
            report = Path(out, "report.md").read_text(encoding="utf-8")
            self.assertNotIn("Error vs N", report)
            self.assertNotIn("Numerical error", report)
            self.assertNotIn("Not verified (hollow markers)", report)
            self.assertNotIn("skipped", report)
            results = data.load_results(os.path.join(tmp, "results.csv"))
            self.assertFalse(numerics.has_errors(results))
            self.assertEqual(numerics.error_tables(results, figures.Context.of(results, None)), [])
            # its tables (device, status, rows not ok, slopes) have their LaTeX copies too
            found = assert_tables_match(self, out)
            self.assertIn("tables/slopes_memory.tex", found)
            self.assertIn("tables/device.tex", found)


class Tables(unittest.TestCase):

    def test_one_description_two_renderings(self):
        table = tables.Table("t_1", ["variant", "RMSE", "rows"],
                             [[tables.Code("flash2[br=64]"), 3.2e-4, 4], [tables.Strong("all"), None, tables.Strong(8)],
                              ["a|b_c", float("inf"), 0], ["x", 1.96e-4, -5.04e-6]], "lrr", "RMSE, 50% of N×N")
        self.assertEqual(tables.markdown(table), [
            "| variant | RMSE | rows |", "| --- | ---: | ---: |", "| `flash2[br=64]` | 3.2e-4 | 4 |",
            "| **all** | – | **8** |", "| a\\|b_c | ∞ | 0 |", "| x | 2.0e-4 | -5.0e-6 |"])
        tex = tables.latex(table)
        self.assertIn(r"\caption{RMSE, 50\% of N$\times$N}", tex)
        self.assertIn(r"\begin{tabular}{lrr}", tex)
        self.assertIn(r"\texttt{flash2[br=64]} & $3.2\times10^{-4}$ & 4 \\", tex)
        self.assertIn(r"\textbf{all} & -- & \textbf{8} \\", tex)
        self.assertIn(r"a\textbar{}b\_c & $\infty$ & 0 \\", tex)
        self.assertIn(r"x & $2.0\times10^{-4}$ & $-5.0\times10^{-6}$ \\", tex)
        self.assertLess(tex.index(r"\toprule"), tex.index(r"\midrule"))
        self.assertLess(tex.index(r"\midrule"), tex.index(r"\bottomrule"))

    def test_names_are_unique_files(self):
        collected = tables.Tables()
        first = collected.render(tables.Table("rmse_fp16_a b", ["x"], [["1"]]))
        second = collected.render(tables.Table("rmse_fp16_a_b", ["x"], [["2"]]))
        self.assertEqual(first[-1], "LaTeX: [tables/rmse_fp16_a_b.tex](tables/rmse_fp16_a_b.tex)")
        self.assertEqual(second[-1], "LaTeX: [tables/rmse_fp16_a_b-2.tex](tables/rmse_fp16_a_b-2.tex)")

    def test_sci(self):
        self.assertEqual([tables.sci(v) for v in (3.2e-4, 1.0, 0.0, 99.6, 1.23456e10, -4.5e-7)],
                         ["3.2e-4", "1.0e0", "0", "1.0e2", "1.2e10", "-4.5e-7"])


if __name__ == "__main__":
    unittest.main()
