"""The registry of figures, and the figures themselves.

A figure is a function (results, context) -> Drawn, registered with @figure under the name of its files
(NAME.png, NAME.svg), a title, a one-line caption for the report, the columns it reads and the measured
columns of which at least one must hold a value. A figure whose columns are absent, or whose measured columns
are empty in every row (no traffic on a CPU run), is skipped with a one-line note in the report. A figure of
one suite's rows (figure2: a block-size sweep) also says which files it `applies` to, and is left out of the
report of any other file without a word. The report draws the figures in registration order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from matplotlib.lines import Line2D

from . import style
from .data import (UNVERIFIED, Results, Row, column, column_sum, group_by, oom_ns, order_key, ordered,
                   plotted_rows, points, run_device, run_stamp, setting_columns, verification)
from .scaling import (MAX_COLUMNS, Panel, Series, SlopeRow, TooManyPanels, draw_grid, draw_legend,
                      fit_legend_columns, line_handle, oom_handle)


@dataclass
class Context:
    """What every figure of one report shares, so a variant keeps its color from figure to figure."""

    colors: Dict[str, str]          # variant -> color
    markers: Dict[str, str]         # dtype -> marker
    materializes: Dict[str, bool]   # variant -> materializes the N x N matrix
    settings: List[str]             # extra panel columns (data.setting_columns)
    device_memory: Optional[float]  # bytes of device memory (run.json device.memory_bytes), if recorded
    device: Optional[str] = None    # data.run_device: device.name, "CPU (model)" for a null device; None: not recorded
    stamp: str = ""                 # data.run_stamp: device and commit, the footer of every figure

    @classmethod
    def of(cls, results: Results, run: Optional[Dict[str, Any]]) -> "Context":
        variants = results.distinct("variant")
        materializing = {row["variant"] for row in results.rows if row.get("materializes") == 1}
        device = (run or {}).get("device")
        memory = device.get("memory_bytes") if isinstance(device, dict) else None
        return cls(colors=style.palette(variants), markers=style.markers(results.distinct("dtype")),
                   materializes={v: v in materializing for v in variants}, settings=setting_columns(results),
                   device_memory=float(memory) if isinstance(memory, (int, float)) and memory > 0 else None,
                   device=run_device(run), stamp=run_stamp(run))

    def title(self, title: str, rows: Sequence[Row]) -> str:
        """The figure's title and under it the batch B and heads H where one value holds for all its rows, and the
        device: 'Speed vs N\nB=1, H=16 · NVIDIA H100 80GB HBM3'."""
        problem = []
        for name, label in (("batch", "B"), ("heads", "H")):
            values = {row.get(name) for row in rows}
            if len(values) == 1 and None not in values:
                problem.append(f"{label}={values.pop()}")
        under = " · ".join(part for part in (", ".join(problem), self.device) if part)
        return f"{title}\n{under}" if under else title


@dataclass
class Drawn:
    figure: object                  # matplotlib Figure
    slopes: List[SlopeRow]
    notes: List[str] = field(default_factory=list)
    markdown: List[Any] = field(default_factory=list)  # report.md under the figure: lines and tables.Table


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    caption: str
    columns: Tuple[str, ...]
    measured: Tuple[str, ...]
    draw: Callable[[Results, Context], Optional[Drawn]]
    applies: Optional[Callable[[Results], bool]] = None  # None: every file


@dataclass
class Outcome:
    spec: FigureSpec
    files: List[str] = field(default_factory=list)  # written, relative to the output folder
    skipped: str = ""                               # why not, when skipped
    slopes: List[SlopeRow] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    markdown: List[Any] = field(default_factory=list)
    applies: bool = True                            # False: not a figure of this file, left out of the report


FIGURES: List[FigureSpec] = []


def figure(name: str, title: str, caption: str, columns: Sequence[str], measured: Sequence[str],
           applies: Optional[Callable[[Results], bool]] = None):
    """Registers the decorated function as a figure; `applies(results)` false leaves it out of that report."""

    def register(draw: Callable[[Results, Context], Optional[Drawn]]):
        if any(f.name == name for f in FIGURES):
            raise ValueError(f"figure '{name}' registered twice")
        FIGURES.append(FigureSpec(name, title, caption, tuple(columns), tuple(measured), draw, applies))
        return draw

    return register


def render_all(results: Results, run: Optional[Dict[str, Any]], out_dir: str) -> List[Outcome]:
    """Draws every registered figure into out_dir (removing the files of a skipped one left by an older run)."""
    context = Context.of(results, run)
    outcomes = []
    for spec in FIGURES:
        outcome = Outcome(spec)
        missing = [c for c in spec.columns if not results.has(c)]
        if spec.applies is not None and not spec.applies(results):
            outcome.applies = False
            outcome.skipped = "no rows of its kind"
        elif missing:
            outcome.skipped = "column " + ", ".join(f"'{c}'" for c in missing) + " absent from results.csv"
        elif not results.any_value(spec.measured):
            outcome.skipped = "not measured in this run (" + ", ".join(spec.measured) + " empty in every row)"
        else:
            with style.fixed_style():
                try:
                    drawn = spec.draw(results, context)
                except TooManyPanels as e:
                    drawn, outcome.skipped = None, str(e)
                if drawn is None and not outcome.skipped:
                    outcome.skipped = "no ok row with a positive value to plot"
                elif drawn is not None:
                    style.footer(drawn.figure, context.stamp)
                    outcome.files = style.save(drawn.figure, out_dir, spec.name)
                    outcome.slopes, outcome.notes, outcome.markdown = drawn.slopes, drawn.notes, drawn.markdown
        if outcome.skipped:
            for stale in (f"{spec.name}.png", f"{spec.name}.svg"):
                if os.path.isfile(os.path.join(out_dir, stale)):
                    os.remove(os.path.join(out_dir, stale))
        outcomes.append(outcome)
    return outcomes


# --- shared pieces ---------------------------------------------------------------------------------------

PASS_LABELS = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward + backward"}
TENSOR_LABELS = {"o": "O", "lse": "LSE", "dq": "dQ", "dk": "dK", "dv": "dV"}
N_LABEL = "sequence length N (seqlen_q)"


def describe(columns: Sequence[str], values: Sequence) -> str:
    """Panel title from its key, e.g. 'forward, d=64, causal'."""
    parts = []
    for c, v in zip(columns, values):
        if c == "pass":
            parts.append(PASS_LABELS.get(v, str(v)))
        elif c == "head_dim":
            parts.append(f"d={v}")
        elif c == "causal":
            parts.append("causal" if str(v).lower() in ("1", "true") else "non-causal")
        elif c == "seqlen_k":
            parts.append(f"N_k={v}")
        elif c == "variant":
            parts.append(str(v))
        elif c == "tensor":
            parts.append(TENSOR_LABELS.get(v, str(v)))
        elif c == "dropout" and isinstance(v, (int, float)):
            parts.append(f"dropout={v:g}")
        else:
            parts.append(f"{c}={'' if v is None else v}")
    return ", ".join(parts)


def merged_note(figure: str, series: Sequence[Series]) -> List[str]:
    merged = sum(s.merged for s in series)
    return [f"{figure}: {merged} values at an N already measured for their line were merged (median)"] \
        if merged else []


def dtype_legend(context: Context, dtypes: Sequence[str], styles: Optional[Dict[str, Tuple[str, float]]] = None,
                 shaded: bool = False) -> List[Tuple[object, str]]:
    """Legend entries of the dtypes: the marker alone; with `styles` (style.dtype_styles), the marker on a line in
    the dtype's line style, or in its shade of grey where the lines of a dtype are a shade of their color
    (`shaded`)."""
    if styles is None:
        return [(line_handle(style.MODEL_GRAY, context.markers[d], "none"), d) for d in dtypes]
    return [(line_handle(style.shade(style.LEGEND_GRAY, styles[d][1]) if shaded else style.LEGEND_GRAY,
                         context.markers[d], "-" if shaded else styles[d][0]), d) for d in dtypes]


def drawn_dtypes(results: Results, values: Sequence[Callable[[Row], Optional[float]]]) -> List[str]:
    """The dtypes of the rows a scaling figure of `values` draws: ok with a positive value, or out of memory."""
    return ordered({r["dtype"] for r in plotted_rows(results)
                    if r["status"] == "oom" or any((value(r) or 0) > 0 for value in values)}, "dtype")


def model_handle() -> Line2D:
    """Legend entry of a model line as the memory figures draw it: thin dark dashes, no marker."""
    return Line2D([], [], color=style.shade(style.LEGEND_GRAY, style.MODEL_SHADE), linestyle="--",
                  linewidth=style.MODEL_WIDTH, dashes=style.MODEL_DASHES)


def unverified_handle(marker: str = "o") -> Line2D:
    """Legend entry of a point whose row was not verified: a hollow marker."""
    return Line2D([], [], color=style.UNVERIFIED_GRAY, marker=marker, markerfacecolor="none", linestyle="none",
                  markersize=6)


# --- memory ----------------------------------------------------------------------------------------------

def _memory(results: Results, context: Context, name: str, title: str, value, model, quantity: str,
            ylabel: str, capacity: bool = False) -> Optional[Drawn]:
    panel_columns = ("pass", "head_dim", *context.settings)
    panels, all_series, drawn_rows, variants, dtypes = [], [], [], set(), set()
    styles = style.dtype_styles(drawn_dtypes(results, (value,)))
    for key, rows in group_by(plotted_rows(results), panel_columns):
        series = []
        for (variant, dtype), line_rows in group_by(rows, ("variant", "dtype")):
            ns, ys, merged = points(line_rows, value)
            oom = oom_ns(line_rows)
            if not ns and not oom:
                continue
            color, marker = context.colors[variant], context.markers[dtype]
            # the dtype's shade; texts in the variant's own color, so lines alike (fp16, bf16) share one
            series.append(Series(f"{variant} {dtype}", quantity, ns, ys, style.shade(color, styles[dtype][1]), marker,
                                 oom=oom, oom_color=color, label_color=color, merged=merged))
            mns, mys, _ = points(line_rows, model, status=("ok", "oom"))
            if mns:
                # over the measured line, thin and darker: where model and measurement coincide (the usual
                # case) dashes in the line's own color would vanish into it
                series.append(Series(f"{variant} {dtype}", f"{quantity} (model)", mns, mys,
                                     style.shade(color, style.MODEL_SHADE), None, "--", print_slope=False,
                                     style=dict(linewidth=style.MODEL_WIDTH, dashes=style.MODEL_DASHES,
                                                zorder=style.MODEL_ZORDER)))
            variants.add(variant)
            dtypes.add(dtype)
        if any(s.ns for s in series if s.linestyle == "-"):
            panels.append(Panel(describe(panel_columns, key), key[:1], key[1:], series))
            all_series += series
            drawn_rows += rows
    if not panels:
        return None
    legend = [(line_handle(context.colors[v]), f"{v} (N×N)" if context.materializes.get(v) else v)
              for v in results.distinct("variant") if v in variants]
    legend += dtype_legend(context, [d for d in results.distinct("dtype") if d in dtypes], styles, shaded=True)
    legend.append((model_handle(), "model (dashed)"))
    if any(s.oom for s in all_series):
        legend.append((oom_handle(), "OOM"))
    hline = None
    if capacity and context.device_memory:
        hline = (context.device_memory, f"device memory {style.format_bytes(context.device_memory)}")
    fig, slopes = draw_grid(name, context.title(title, drawn_rows), panels, ("pass",), panel_columns[1:], N_LABEL,
                            ylabel, legend, hline)
    return Drawn(fig, slopes, merged_note(name, all_series))


@figure("memory", "Workspace memory vs N",
        "peak workspace bytes (every device allocation of the variant beyond its inputs and outputs) against N, "
        "one line per variant and dtype, the memory model dashed, out-of-memory rows marked at the top.",
        columns=("workspace_peak_bytes", "workspace_model_bytes"), measured=("workspace_peak_bytes",))
def memory(results: Results, context: Context) -> Optional[Drawn]:
    return _memory(results, context, "memory", "Workspace memory vs N", column("workspace_peak_bytes"),
                   column("workspace_model_bytes"), "workspace peak", "workspace peak (bytes)")


@figure("memory_device", "Device memory vs N",
        "peak device bytes (workspace plus inputs and outputs) against N; dashed: workspace model plus the "
        "input/output bytes; dotted: the device's memory (run.json).",
        columns=("device_peak_bytes", "workspace_model_bytes", "io_bytes"), measured=("device_peak_bytes",))
def memory_device(results: Results, context: Context) -> Optional[Drawn]:
    return _memory(results, context, "memory_device", "Device memory vs N", column("device_peak_bytes"),
                   column_sum("workspace_model_bytes", "io_bytes"), "device peak", "device peak (bytes)",
                   capacity=True)


# --- HBM traffic -----------------------------------------------------------------------------------------

TRAFFIC_QUANTITIES = (
    # (quantity, value, color, measured)
    ("DRAM read+write", column_sum("dram_read_bytes", "dram_write_bytes"), "#1f77b4", True),
    ("L2 requests read+write", column_sum("l2_read_bytes", "l2_write_bytes"), "#ff7f0e", True),
    ("model: minimum", column("bytes_model_min"), style.MODEL_GRAY, False),
    ("model: variant", column("bytes_model_variant"), "#2ca02c", False),
)


@figure("traffic", "HBM traffic vs N",
        "bytes moved per pass against N, per variant: DRAM read+write and L2 request read+write (profiled pass), "
        "with the bytes models dashed (minimum: each input read once, each output written once; variant: the "
        "IO-complexity model of the variant).",
        columns=("dram_read_bytes", "dram_write_bytes", "l2_read_bytes", "l2_write_bytes", "bytes_model_min",
                 "bytes_model_variant"),
        measured=("dram_read_bytes", "dram_write_bytes", "l2_read_bytes", "l2_write_bytes"))
def traffic(results: Results, context: Context) -> Optional[Drawn]:
    panel_columns = ("variant", "pass", "head_dim", *context.settings)
    panels, all_series, drawn_rows, dtypes = [], [], [], set()
    styles = style.dtype_styles(drawn_dtypes(results, [value for _, value, _, measured in TRAFFIC_QUANTITIES
                                                       if measured]))
    for key, rows in group_by(plotted_rows(results), panel_columns):
        series = []
        for (dtype,), line_rows in group_by(rows, ("dtype",)):
            oom = oom_ns(line_rows)
            for i, (quantity, value, color, measured) in enumerate(TRAFFIC_QUANTITIES):
                ns, ys, merged = points(line_rows, value, status=("ok",) if measured else ("ok", "oom"))
                if measured and (ns or (oom and i == 0)):
                    series.append(Series(dtype, quantity, ns, ys, style.shade(color, styles[dtype][1]),
                                         context.markers[dtype], oom=oom if i == 0 else [], oom_color=style.OOM_COLOR,
                                         label_color=color, label_below=i == 1, merged=merged))
                elif not measured and ns:
                    series.append(Series(dtype, quantity, ns, ys, color, None, "--", print_slope=False))
        if any(s.ns for s in series if s.linestyle == "-"):
            panels.append(Panel(describe(panel_columns, key), key[:1], key[1:], series))
            all_series += series
            drawn_rows += rows
            dtypes.update(s.line for s in series)
    if not panels:
        return None
    legend = [(line_handle(color, None, "-" if measured else "--"), quantity)
              for quantity, _, color, measured in TRAFFIC_QUANTITIES]
    legend += dtype_legend(context, [d for d in results.distinct("dtype") if d in dtypes], styles, shaded=True)
    if any(s.oom for s in all_series):
        legend.append((oom_handle(), "OOM"))
    fig, slopes = draw_grid("traffic", context.title("HBM traffic vs N", drawn_rows), panels, ("variant",),
                            panel_columns[1:], N_LABEL, "bytes per pass", legend)
    return Drawn(fig, slopes, merged_note("traffic", all_series))


# --- speed -----------------------------------------------------------------------------------------------

# Columns beside (variant, dtype) that tell two problems apart within a speed panel.
BAR_WIDTH = 0.9  # of the p20-p80 bars
LINE_IDENTITY = ("heads", "heads_kv", "head_dim_v", "window_left", "window_right", "distribution",
                 "softmax_scale", "varlen")
# Columns that split the speed panels further where the rows hold more than one value of them.
SPEED_PANEL_SPLIT = ("dropout",)


def speed_band(row: Row) -> Optional[Tuple[float, float]]:
    """(lower, upper) TFLOP/s of an ok row from its p80 and p20 times (speed is flops over time: the slower p80
    time gives the lower speed); None without the three times."""
    times = [row.get(c) for c in ("time_median_ms", "time_p20_ms", "time_p80_ms")]
    if row.get("tflops") is None or any(t is None or t <= 0 for t in times):
        return None
    median, p20, p80 = times
    return row["tflops"] * median / p80, row["tflops"] * median / p20


def _speed_line(rows: Sequence[Row]) -> Tuple[List[int], List[float], Dict[int, Tuple[float, float]], int]:
    """(N, TFLOP/s, {N: (lower, upper)} where the p20 and p80 times are known, merged) of one line's rows; rows
    at one N merged by median, their bands too."""
    ns, ys, merged = points(rows, column("tflops"))
    lower = dict(zip(*points(rows, lambda r: (speed_band(r) or (None, None))[0])[:2]))
    upper = dict(zip(*points(rows, lambda r: (speed_band(r) or (None, None))[1])[:2]))
    return ns, ys, {n: (lower[n], upper[n]) for n in ns if n in lower and n in upper}, merged


@figure("speed", "Speed vs N",
        "speed (the flops model over the median time; TFLOP/s, or GFLOP/s where slower) against N in the "
        "FlashAttention-2 paper's style: one panel per (pass, head dim, causal; and dropout and device where rows "
        "hold several, each device with its own axis), one line per variant and peer (peers.csv) in the variant's "
        "color, the dtype by marker and line style; bars: the speed at the p20 and p80 times; hollow markers: rows not "
        "verified (verified_heads empty or 'none: ...').",
        columns=("tflops",), measured=("tflops",))
def speed(results: Results, context: Context) -> Optional[Drawn]:
    rows = [r for r in results.rows if r.get("status") == "ok" and r.get("tflops") is not None]
    if not rows:
        return None
    # A CPU reference beside GPU kernels is thousands of times slower, a flat line at 0 on their axis: rows of
    # several devices get panels, an axis and a unit of their own (most rows first).
    devices = {r.get("device") for r in rows}
    devices = sorted(devices, key=lambda d: (-sum(r.get("device") == d for r in rows), order_key("device")(d))) \
        if len(devices) > 1 else [None]
    # Rows at several dropout probabilities (experiments/dropout.toml's p = 0 and p = 0.1 twins) get panels of
    # their own, side by side in a row of panels: in one panel their lines would share color, marker and style.
    split = tuple(c for c in SPEED_PANEL_SPLIT if len({r.get(c) for r in rows}) > 1)
    cell_columns = ("pass", "head_dim", "causal") + split
    panel_columns = cell_columns + (("device",) if devices != [None] else ())
    lines: Dict[Any, List[Tuple]] = {}  # device -> (panel cell, variant, dtype, line rows, N, TFLOP/s, bands)
    merged = 0
    width = len(cell_columns)
    for device in devices:
        for key, line_rows in group_by([r for r in rows if device is None or r.get("device") == device],
                                       cell_columns + ("variant", "dtype") + LINE_IDENTITY):
            # one line per problem swept over N: rows that differ in anything but N (and the batch, which a fixed
            # token count ties to N) are not points of one line, and a problem with one N is a marker alone
            ns, ys, band, extra = _speed_line(line_rows)
            if ns:
                lines.setdefault(device, []).append((key[:width], key[width], key[width + 1], line_rows, ns, ys,
                                                     band))
                merged += extra
    if not lines:
        return None
    devices = [d for d in devices if d in lines]
    passes = ordered({line[0][0] for d in devices for line in lines[d]}, "pass")
    styles = style.dtype_styles(ordered({line[2] for d in devices for line in lines[d]}, "dtype"))
    cells = sorted({line[0][1:] for d in devices for line in lines[d]},
                   key=lambda c: (c[0] or 0, str(c[1]), *(order_key(s)(v) for s, v in zip(split, c[2:]))))
    strips = [(d, p) for d in devices for p in passes if any(line[0][0] == p for line in lines[d])]  # panel rows
    wraps = -(-len(cells) // MAX_COLUMNS)
    ncols, nrows = min(len(cells), MAX_COLUMNS), len(strips) * wraps
    fig = style.new_figure(ncols, nrows)
    fig.suptitle(context.title("Speed vs N", rows))
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[style.PANEL_SIZE[1]] * nrows + [0.5])
    variants, dtypes = [], set()
    marks = results.has("verified_heads")  # a file older than the column says nothing about verification
    any_hollow = any_band = False
    for device in devices:
        top = max([y for *_, ys, _ in lines[device] for y in ys]
                  + [hi for *_, band in lines[device] for _, hi in band.values()])
        unit, factor = style.flops_unit(top)
        first = None
        for pass_name in passes:
            if (device, pass_name) not in strips:
                continue
            strip = strips.index((device, pass_name)) * wraps
            for c_index, cell in enumerate(cells):
                panel_lines = [line for line in lines[device] if line[0] == (pass_name, *cell)]
                if not panel_lines:
                    continue
                ax = fig.add_subplot(grid[strip + c_index // MAX_COLUMNS, c_index % MAX_COLUMNS],
                                     sharex=first, sharey=first)
                first = first or ax
                ax.set_xscale("log", base=2)
                ax.xaxis.set_major_formatter(style.FuncFormatter(lambda v, _: style.format_n(v)))
                ax.set_xlabel(N_LABEL)
                ax.set_ylabel(unit)
                ax.set_title(describe(panel_columns, (pass_name, *cell, device)))
                for _, variant, dtype, line_rows, ns, ys, band in panel_lines:
                    ys = [y * factor for y in ys]
                    color, marker = context.colors[variant], context.markers[dtype]
                    if band:
                        at = [(n, y, band[n]) for n, y in zip(ns, ys) if n in band]
                        ax.errorbar([n for n, _, _ in at], [y for _, y, _ in at],
                                    yerr=[[max(y - lo * factor, 0.0) for _, y, (lo, _) in at],
                                          [max(hi * factor - y, 0.0) for _, y, (_, hi) in at]],
                                    fmt="none", ecolor=color, elinewidth=BAR_WIDTH, capsize=0)
                        any_band = True
                    # An N is drawn hollow when a row merged into it was not verified.
                    hollow = {r["seqlen_q"] for r in line_rows if marks and verification(r) == UNVERIFIED}
                    filled = [i for i, n in enumerate(ns) if n not in hollow]
                    ax.plot(ns, ys, color=color, marker=marker if filled else None, linestyle=styles[dtype][0],
                            linewidth=1.4, markersize=4, markevery=filled if len(filled) < len(ns) else None)
                    if len(filled) < len(ns):
                        ax.plot([n for n in ns if n in hollow], [y for n, y in zip(ns, ys) if n in hollow],
                                color=color, marker=marker, markerfacecolor="none", linestyle="none", markersize=5)
                        any_hollow = True
                    if variant not in variants:
                        variants.append(variant)
                    dtypes.add(dtype)
                ax.set_ylim(0, top * factor * 1.08)
    legend = [(line_handle(context.colors[v]), v) for v in ordered(variants, "variant")]
    legend += dtype_legend(context, [d for d in results.distinct("dtype") if d in dtypes], styles)
    if any_band:
        legend.append((Line2D([], [], color=style.LEGEND_GRAY, marker="|", markersize=9, markeredgewidth=BAR_WIDTH,
                              linestyle="none"), "p20–p80 time"))
    if any_hollow:
        legend.append((unverified_handle(), "not verified"))
    draw_legend(fig.add_subplot(grid[nrows, :]), legend, fit_legend_columns(fig, legend, 3 * ncols))
    notes = [f"speed: {merged} values at an N already measured for their line were merged (median)"] if merged else []
    return Drawn(fig, [], notes)


# Figures in modules of their own register on import, after the ones above.
from . import figure2, numerics  # noqa: E402,F401
