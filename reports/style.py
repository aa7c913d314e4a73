"""The fixed look of every figure, and saving it so the same CSV gives the same bytes.

Determinism: the Agg canvas attached to each figure (no display, no pyplot state, the global backend
untouched), matplotlib's own defaults with the user's matplotlibrc ignored, one font that matplotlib ships
(DejaVu Sans), text drawn as paths in SVG, a fixed svg.hashsalt (SVG element ids derive from it), figure sizes
that depend on the panel grid only, a fixed dpi, and metadata without a date.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Dict, Iterator, List, Sequence, Tuple

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullLocator

SOFTWARE = "flashlab reports"
PNG_DPI = 150
PANEL_SIZE = (4.2, 3.1)   # inches per panel
LEGEND_HEIGHT = 0.75      # inches for the legend row under the panels
FOOTER_HEIGHT = 0.2       # inches of the strip under the layout that holds the footer (device and commit)
FOOTER_PAD = 0.08         # inches from the figure's left edge to the footer
FOOTER_SIZE = 6.5         # points
FOOTER_GRAY = "#8a8a8a"

RC = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "mathtext.fontset": "dejavusans",
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 8,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
    "svg.fonttype": "path",
    "svg.hashsalt": "flashlab-reports",
}

# Colors: the tab10 cycle, spelled out so it cannot change under us.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
          "#d62728")
OOM_COLOR = "#d62728"
MODEL_GRAY = "#555555"
FLOOR_GRAY = "#9a9a9a"       # the floor of the verification rule: a thin line
UNVERIFIED_GRAY = "#7f7f7f"  # hollow markers of rows not verified
DTYPE_MARKERS = {"fp64": "D", "fp32": "s", "fp16": "o", "bf16": "^", "fp8_e4m3": "v"}
OTHER_MARKERS = ("P", "X", "*", "h", "<", ">")
# A line's dtype beyond its marker, by the dtype's place among the figure's dtypes (canonical order): a line
# style where line styles mean nothing else (speed), a shade of the line's color where they mean measured vs
# model (memory, traffic): 0 the color itself, > 0 towards white, < 0 towards black.
DTYPE_LINESTYLES = ("-", "--", ":", "-.")
DTYPE_SHADES = (0.0, -0.3, 0.4, -0.55)
LEGEND_GRAY = "#7f7f7f"      # dtype entries of a legend, shaded as the dtype's lines
# Model lines drawn over measured ones (memory): thin dark dashes stay visible where the two coincide.
MODEL_SHADE = -0.7
MODEL_WIDTH = 0.9
MODEL_DASHES = (3.0, 3.0)    # dash and gap (in line widths): the measured line shows through the gaps
MODEL_ZORDER = 2.5           # above lines (2), below text (3)
# Speed units: the largest in which the figure's fastest point is at least 1, so a CPU run reads 30 GFLOP/s and
# not 0.03 TFLOP/s (whose ticks read 0.000, 0.005, ...).
FLOPS_UNITS = (("TFLOP/s", 1.0), ("GFLOP/s", 1e3), ("MFLOP/s", 1e6), ("kFLOP/s", 1e9))


@contextlib.contextmanager
def fixed_style() -> Iterator[None]:
    """matplotlib defaults plus RC, whatever the environment's matplotlibrc says; restored on exit."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(RC)
        yield


def palette(values: Sequence[str]) -> Dict[str, str]:
    """One color per value (e.g. variant), in the given (deterministic) order."""
    return {v: COLORS[i % len(COLORS)] for i, v in enumerate(values)}


def markers(dtypes: Sequence[str]) -> Dict[str, str]:
    others = [d for d in dtypes if d not in DTYPE_MARKERS]
    out = {d: DTYPE_MARKERS[d] for d in dtypes if d in DTYPE_MARKERS}
    out.update({d: OTHER_MARKERS[i % len(OTHER_MARKERS)] for i, d in enumerate(others)})
    return out


def dtype_styles(dtypes: Sequence[str]) -> Dict[str, Tuple[str, float]]:
    """(line style, shade) of each dtype, by its place in `dtypes` (a figure's, in canonical order)."""
    return {d: (DTYPE_LINESTYLES[i % len(DTYPE_LINESTYLES)], DTYPE_SHADES[i % len(DTYPE_SHADES)])
            for i, d in enumerate(dtypes)}


def shade(color: str, amount: float) -> str:
    """`color` ('#rrggbb') mixed with white (amount > 0) or black (amount < 0) by |amount|."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    return "#" + "".join(f"{round(c + (target - c) * abs(amount)):02x}" for c in rgb)


def flops_unit(top_tflops: float) -> Tuple[str, float]:
    """(unit, factor from TFLOP/s) of FLOPS_UNITS in which `top_tflops` reads at least 1."""
    for unit, factor in FLOPS_UNITS:
        if top_tflops * factor >= 1:
            return unit, factor
    return FLOPS_UNITS[-1]


def format_n(n: float) -> str:
    """Sequence lengths: 512, 1K, 64K."""
    if n <= 0 or abs(n - round(n)) > 1e-9:
        return ""
    n = int(round(n))
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def format_bytes(b: float) -> str:
    """Binary units: 512 B, 4 KiB, 16 GiB (3 significant digits off powers of two)."""
    if b <= 0:
        return ""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    k = min(int(math.floor(math.log(b, 1024) + 1e-9)), len(units) - 1) if b >= 1 else 0
    v = b / 1024 ** k
    text = f"{v:.0f}" if abs(v - round(v)) < 1e-6 else f"{v:.3g}"
    return f"{text} {units[k]}"


def loglog_axes(ax, xlabel: str, ylabel: str) -> None:
    """Base-2 logarithmic axes, ticks at powers of two labelled in N and bytes."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=9))
    ax.yaxis.set_major_locator(LogLocator(base=2, subs=(1.0,), numticks=8))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_n(v)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def error_axes(ax, xlabel: str, ylabel: str) -> None:
    """N on a base-2 logarithmic axis as loglog_axes; errors on a decimal one, ticks at powers of ten."""
    loglog_axes(ax, xlabel, ylabel)
    ax.set_yscale("log", base=10)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,), numticks=9))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(LogFormatterSciNotation(base=10))


def new_figure(ncols: int, nrows: int) -> Figure:
    """A figure of nrows x ncols panels plus a legend row; the size depends only on the grid."""
    width = PANEL_SIZE[0] * max(ncols, 1) + 0.4
    height = PANEL_SIZE[1] * max(nrows, 1) + LEGEND_HEIGHT + 0.3
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def footer(fig: Figure, text: str) -> None:
    """`text` (the run's device and commit, data.run_stamp) in small grey type at the bottom left of the figure,
    in a strip of FOOTER_HEIGHT added under the area the constrained layout fills, so that it overlaps nothing
    (the layout ignores a figure's text)."""
    height = fig.get_figheight() + FOOTER_HEIGHT
    fig.set_figheight(height)
    strip = FOOTER_HEIGHT / height
    fig.get_layout_engine().set(rect=(0.0, strip, 1.0, 1.0 - strip))
    fig.text(FOOTER_PAD / fig.get_figwidth(), strip / 2, text, ha="left", va="center", fontsize=FOOTER_SIZE,
             color=FOOTER_GRAY)


def save(fig: Figure, out_dir: str, name: str) -> List[str]:
    """Writes NAME.png and NAME.svg; returns the file names (relative to out_dir)."""
    files = [f"{name}.png", f"{name}.svg"]
    fig.savefig(os.path.join(out_dir, files[0]), format="png", dpi=PNG_DPI, metadata={"Software": SOFTWARE})
    fig.savefig(os.path.join(out_dir, files[1]), format="svg", metadata={"Date": None, "Creator": SOFTWARE})
    return files
