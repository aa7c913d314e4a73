"""Regression tests of the figures' look (a users' issue): the speed figure's unit and p20-p80 bars, dtypes told
apart beyond the marker, the memory model line drawn over the measured one with legend handles as drawn, the
batch, heads and device in the titles, and the device and commit in every figure's footer. Each builds the
matplotlib Figure and inspects what is on it.
"""

import os
import sys
import tempfile
import unittest
import warnings
from pathlib import Path
from unittest import mock

from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from reports import data, figures, style  # noqa: E402

from tests.reports.test_reports import RUN_DIR, read_csv, run_main, write_csv  # noqa: E402


def fixture():
    return data.load_results(str(RUN_DIR / "results.csv")), data.load_run(str(RUN_DIR / "run.json"))


def draw(name, results, run):
    with style.fixed_style():
        return getattr(figures, name)(results, figures.Context.of(results, run))


def panels(drawn):
    """{title: axes} of a figure's panels (the legend row has no title)."""
    return {ax.get_title(): ax for ax in drawn.figure.axes if ax.get_title()}


def legend_of(drawn):
    legend = [ax for ax in drawn.figure.axes if not ax.get_title()][0].get_legend()
    return dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles))


def suptitle(drawn):
    return drawn.figure._suptitle.get_text()


def speed_row(n, tflops, **fields):
    """An ok fwd row of a speed-only file: times chosen so that p20 is 10% faster and p80 20% slower."""
    row = dict(variant="flash2", status="ok", dtype="fp16", head_dim=64, causal="0", seqlen_q=n, tflops=tflops,
               time_median_ms=1.0, time_p20_ms=0.9, time_p80_ms=1.2, batch=2, heads=8, device="cuda")
    row["pass"] = "fwd"
    row.update(fields)
    return row


class SpeedUnit(unittest.TestCase):
    """Issue 1: CPU speeds read 0.000 TFLOP/s."""

    def test_cpu_only_run_in_gflops(self):
        results, run = fixture()
        cpu = [r for r in results.rows if r["device"] == "cpu"]
        drawn = draw("speed", data.Results("results.csv", results.columns, cpu), run)
        (ax,) = panels(drawn).values()
        self.assertEqual(ax.get_ylabel(), "GFLOP/s")
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        self.assertEqual([round(y, 3) for y in ys], [30.0, 30.0, 30.0])  # 30e9 flop/s in the fixture
        self.assertGreater(ax.get_ylim()[1], 30.0)

    def test_gpu_and_cpu_rows_get_panels_and_units_of_their_own(self):
        drawn = draw("speed", *fixture())
        by_title = panels(drawn)
        self.assertEqual(by_title["forward, d=64, non-causal, device=cuda"].get_ylabel(), "TFLOP/s")
        cpu = by_title["forward, d=64, non-causal, device=cpu"]
        self.assertEqual(cpu.get_ylabel(), "GFLOP/s")
        self.assertEqual(sorted({round(y, 3) for line in cpu.get_lines() for y in line.get_ydata()}), [30.0])
        self.assertLess(cpu.get_ylim()[1], 100.0)  # its own axis, not the GPU's 0..330

    def test_flops_unit(self):
        self.assertEqual(style.flops_unit(312.0), ("TFLOP/s", 1.0))
        self.assertEqual(style.flops_unit(1.0), ("TFLOP/s", 1.0))
        self.assertEqual(style.flops_unit(0.03), ("GFLOP/s", 1e3))
        self.assertEqual(style.flops_unit(2e-5), ("MFLOP/s", 1e6))


class SpeedBars(unittest.TestCase):
    """Issue 2: no p20-p80 error bars."""

    def test_bars_from_p20_and_p80_times(self):
        rows = [speed_row(n, 100.0) for n in (256, 512, 1024)]
        rows.append(speed_row(2048, 100.0, time_p20_ms=None))  # no bar without both times
        drawn = draw("speed", data.Results("results.csv", tuple(rows[0]), rows), None)
        (ax,) = panels(drawn).values()
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        self.assertEqual(len(bars), 1)
        (segments,) = [c for c in bars[0].get_children() if isinstance(c, LineCollection)]
        spans = [(s[0][0], round(min(s[0][1], s[1][1]), 6), round(max(s[0][1], s[1][1]), 6))
                 for s in segments.get_segments()]
        # speed = flops / time: p80 (1.2 ms) gives 100 / 1.2, p20 (0.9 ms) gives 100 / 0.9
        expected = (round(100 / 1.2, 6), round(100 / 0.9, 6))
        self.assertEqual(spans, [(n, *expected) for n in (256, 512, 1024)])
        self.assertEqual(segments.get_color()[0].tolist()[:3], [int(style.COLORS[0][i:i + 2], 16) / 255
                                                                 for i in (1, 3, 5)])
        self.assertGreaterEqual(ax.get_ylim()[1], 100 / 0.9)  # the bars fit in the panel
        self.assertIn("p20–p80 time", legend_of(drawn))

    def test_no_bars_without_the_time_columns(self):
        rows = [{k: v for k, v in speed_row(n, 100.0).items() if not k.startswith("time_")} for n in (256, 512)]
        drawn = draw("speed", data.Results("results.csv", tuple(rows[0]), rows), None)
        self.assertFalse([c for ax in drawn.figure.axes for c in ax.containers])
        self.assertNotIn("p20–p80 time", legend_of(drawn))


class DtypesApart(unittest.TestCase):
    """Issue 3: the dtypes of one variant share a color and differ only by marker."""

    def test_speed_line_style_per_dtype_and_in_the_legend(self):
        rows = [speed_row(n, t, dtype=dtype) for n in (256, 512) for dtype, t in (("fp16", 100.0), ("bf16", 90.0))]
        drawn = draw("speed", data.Results("results.csv", tuple(rows[0]), rows), None)
        (ax,) = panels(drawn).values()
        styles = {line.get_marker(): line.get_linestyle() for line in ax.get_lines()}
        self.assertEqual(set(styles), {"o", "^"})  # fp16, bf16
        self.assertNotEqual(styles["o"], styles["^"])
        legend = legend_of(drawn)
        for dtype, marker in (("fp16", "o"), ("bf16", "^")):
            self.assertEqual(legend[dtype].get_marker(), marker)
            self.assertEqual(legend[dtype].get_linestyle(), styles[marker], dtype)

    def test_memory_shade_per_dtype(self):
        drawn = draw("memory", *fixture())
        ax = panels(drawn)["forward, d=64"]
        flash = style.palette(["cpu-reference", "flash2", "standard"])["flash2"]
        measured = {(line.get_marker(), line.get_color()) for line in ax.get_lines()
                    if line.get_linestyle() == "-" and line.get_marker() in ("o", "^")}
        self.assertEqual(len({color for _, color in measured}), 4)  # two variants x two dtypes, all told apart
        self.assertIn(("o", flash), measured)                       # fp16, the first dtype, in the variant's color
        legend = legend_of(drawn)
        self.assertNotEqual(legend["fp16"].get_color(), legend["bf16"].get_color())
        self.assertEqual(legend["fp16"].get_linestyle(), "-")


class MemoryModel(unittest.TestCase):
    """Issue 4: the model line is hidden under the measured one, and the legend shows what is not drawn."""

    def setUp(self):
        self.drawn = draw("memory", *fixture())
        self.ax = panels(self.drawn)["forward, d=64"]
        lines = [l for l in self.ax.get_lines() if l.get_transform() == self.ax.transData]
        self.model = [l for l in lines if l.get_linestyle() == "--"]
        self.measured = [l for l in lines if l.get_linestyle() == "-"]

    def test_model_drawn_over_the_measured_line_in_a_contrasting_color(self):
        self.assertEqual(len(self.model), 4)
        for model in self.model:
            under = [m for m in self.measured if list(m.get_xdata()) == list(model.get_xdata())[:len(m.get_xdata())]
                     and list(m.get_ydata()) == list(model.get_ydata())[:len(m.get_ydata())]]
            self.assertTrue(under, "in the fixture the model coincides with the measurement")
            for m in under:
                self.assertGreater(model.get_zorder(), m.get_zorder())
                self.assertNotEqual(model.get_color(), m.get_color())
                self.assertLess(model.get_linewidth(), m.get_linewidth())

    def test_legend_handles_are_what_is_drawn(self):
        legend = legend_of(self.drawn)
        handle = legend["model (dashed)"]
        self.assertIn(handle.get_marker(), ("None", "none", "", None))
        self.assertEqual(handle.get_linestyle(), self.model[0].get_linestyle())
        self.assertEqual(handle.get_linewidth(), self.model[0].get_linewidth())
        drawn_markers = {l.get_marker() for ax in panels(self.drawn).values() for l in ax.get_lines()}
        for label, h in legend.items():
            if h.get_marker() not in ("None", "none", "", None):
                self.assertIn(h.get_marker(), drawn_markers, label)


class Titles(unittest.TestCase):
    """Issue 5: titles without the batch, the heads and the device."""

    def test_batch_heads_and_device_in_every_title(self):
        results, run = fixture()
        for name in ("memory", "memory_device", "traffic", "speed"):
            title = suptitle(draw(name, results, run))
            self.assertIn("B=1, H=16", title, name)
            self.assertIn("NVIDIA H100 80GB HBM3", title, name)

    def test_cpu_device_and_varying_heads(self):
        rows = [speed_row(n, 0.05, heads=h, device="cpu") for n in (256, 512) for h in (4, 8)]
        results = data.Results("results.csv", tuple(rows[0]), rows)
        title = suptitle(draw("speed", results, {"device": None}))
        self.assertIn("B=2", title)
        self.assertNotIn("H=", title)  # not constant
        self.assertIn("CPU", title)
        self.assertNotIn("CPU", suptitle(draw("speed", results, None)))  # run.json absent: device unknown

    def test_error_title(self):
        numerics = Path(__file__).resolve().parent / "fixtures" / "numerics"
        results = data.load_results(str(numerics / "results.csv"))
        with style.fixed_style():
            drawn = figures.FIGURES[[f.name for f in figures.FIGURES].index("error")].draw(
                results, figures.Context.of(results, data.load_run(str(numerics / "run.json"))))
        self.assertIn("B=1, H=4 · NVIDIA H100 80GB HBM3", suptitle(drawn))

    def test_figure2_title(self):
        from tests.reports.test_reports import fig2_rows, fixture_columns
        columns = fixture_columns()
        rows = fig2_rows(columns)
        with tempfile.TemporaryDirectory(prefix="reports-test-") as tmp:
            write_csv(os.path.join(tmp, "results.csv"), columns, rows)
            results = data.load_results(os.path.join(tmp, "results.csv"))
        with style.fixed_style():
            drawn = figures.FIGURES[[f.name for f in figures.FIGURES].index("figure2")].draw(
                results, figures.Context.of(results, data.load_run(str(RUN_DIR / "run.json"))))
        self.assertIn("B=64, H=16", suptitle(drawn))
        self.assertIn("NVIDIA H100 80GB HBM3", suptitle(drawn))

class Provenance(unittest.TestCase):
    """Every figure states the run's device and commit: in its caption in report.md (test_reports) and in a footer
    on the figure itself."""

    def test_stamp(self):
        gpu = {"device": {"name": "NVIDIA H200"}, "git_commit": "11ae650b498d0c2f1b7c5ad6e3b1f0c9d8e7a6b5"}
        self.assertEqual(data.run_stamp(gpu), "NVIDIA H200, commit 11ae650b498d")
        self.assertEqual(data.run_stamp(dict(gpu, git_commit=gpu["git_commit"] + "+dirty", git_dirty=True)),
                         "NVIDIA H200, commit 11ae650b498d (dirty)")
        self.assertEqual(data.run_stamp(dict(gpu, git_dirty=True)), "NVIDIA H200, commit 11ae650b498d (dirty)")
        cpu = {"device": None, "host": {"cpu_model": "Intel(R) Xeon(R) Processor"}, "git_commit": "abc1234"}
        self.assertEqual(data.run_stamp(cpu), "CPU (Intel(R) Xeon(R) Processor), commit abc1234")
        self.assertEqual(data.run_stamp({"device": None, "host": {"cpu_model": "unknown"}}),
                         "CPU, commit not recorded")
        # the commit the binary was built from (build.git_commit) goes first: the checkout the run started in may be
        # another tree
        built = dict(gpu, git_dirty=True, build={"git_commit": "d1b9b36f00000000000000000000000000000000"})
        self.assertEqual(data.run_stamp(built), "NVIDIA H200, commit d1b9b36f0000")
        built["build"]["git_commit"] += "+dirty"
        self.assertEqual(data.run_stamp(built), "NVIDIA H200, commit d1b9b36f0000 (dirty)")
        for unknown in ("unknown", "", None):
            self.assertEqual(data.run_stamp(dict(gpu, build={"git_commit": unknown})), "NVIDIA H200, commit 11ae650b498d")
        self.assertEqual(data.run_stamp(dict(gpu, build="text")), "NVIDIA H200, commit 11ae650b498d")
        for run in (None, {}, {"device": {"sm_count": 132}, "git_commit": "unknown"}, {"git_commit": ""}):
            self.assertEqual(data.run_stamp(run), "device not recorded, commit not recorded", run)

    def footers(self, run_dir):
        """{figure name: (figure, its footer text)} of every figure render_all draws for a fixture run, each
        laid out with warnings as errors."""
        results, run = data.load_results(str(run_dir / "results.csv")), data.load_run(str(run_dir / "run.json"))
        drawn = {}

        def capture(fig, out_dir, name):
            drawn[name] = fig
            return []

        with tempfile.TemporaryDirectory(prefix="reports-test-") as out, \
                mock.patch.object(style, "save", side_effect=capture):
            figures.render_all(results, run, out)
        self.assertTrue(drawn)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for fig in drawn.values():
                fig.canvas.draw()
        return drawn

    def test_footer_on_every_figure(self):
        numerics = Path(__file__).resolve().parent / "fixtures" / "numerics"
        drawn = {**self.footers(RUN_DIR), **self.footers(numerics)}
        self.assertEqual(sorted(drawn), ["error", "memory", "memory_device", "speed", "traffic"])
        for name, fig in drawn.items():
            texts = [t for t in fig.texts if t.get_text() == "NVIDIA H100 80GB HBM3, commit 76ef99e2c4d1"]
            self.assertEqual(len(texts), 1, name)
            renderer = fig.canvas.get_renderer()
            box = texts[0].get_window_extent(renderer)
            self.assertTrue(fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0, name)
            for ax in fig.axes:  # under everything the layout placed, the legend included
                self.assertLess(box.y1, ax.get_tightbbox(renderer).y0, (name, ax.get_title()))


if __name__ == "__main__":
    unittest.main()
