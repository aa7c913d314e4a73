"""Figures of a quantity against N on log-log axes, in a grid of panels: lines of measured points with their
fitted slope printed on them, dashed model lines, and out-of-memory markers (or other marked rows without a
value, as Track) on tracks at the top of the panel.

The figure modules say what goes in each panel (Panel, Series); this module draws it the same way for all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import style
from .data import tuple_key
from .fit import Fit, fit_power_law, fit_window

OOM_TRACK_TOP = 0.95   # axes fraction of the first out-of-memory track
OOM_TRACK_STEP = 0.07  # one track per line with out-of-memory rows, downwards
MAX_COLUMNS = 4        # a grid row with more panels wraps onto several rows of panels
MAX_PANELS = 48        # panels of one or two points each: more than this is a random-problem suite, not a figure
MAX_SWEEP_PANELS = 256  # panels of sweeps over N: more than this is too large to draw or read
MIN_SCALING_POINTS = 3
LEGEND_STYLE = dict(frameon=False, handlelength=2.6)  # the legend under the panels
# Inches of the figure's width the legend leaves to the panels' y label and tick labels (the legend row spans the
# panels, not the margin left of them: measured 0.49 in speed, 0.57 in error, 0.72 in memory and traffic, whose
# ticks read "512 MiB") and to the layout's pad on the right (0.04), with room for text measured at 100 dpi and
# drawn at 72 (SVG) or 150 (PNG).
LEGEND_MARGIN = 0.9


class TooManyPanels(Exception):
    """A figure would need more than MAX_PANELS panels: it is skipped, with this as the reason."""


@dataclass
class Series:
    """One line of a panel: points (N, y) with y > 0, N ascending and distinct."""

    line: str                    # what the line is, e.g. "standard fp16" (slopes table)
    quantity: str                # what is plotted, e.g. "workspace peak" (slopes table)
    ns: List[int]
    ys: List[float]
    color: str
    marker: Optional[str] = None
    linestyle: str = "-"
    oom: List[int] = field(default_factory=list)  # N of out-of-memory rows
    oom_color: Optional[str] = None  # of the "OOM" text beside the markers; default: the line's color
    label_color: Optional[str] = None  # of the slope text; default: the line's color (a dtype's shade: the base)
    print_slope: bool = True     # "slope 2.00" on the line (model lines leave it to the table)
    label_below: bool = False    # put the slope under the line instead of above it
    merged: int = 0              # values merged by median at a repeated N
    fitted: bool = True          # False: no slope at all (neither printed nor in the slopes table)
    style: Dict[str, Any] = field(default_factory=dict)  # more Line2D properties (linewidth, markerfacecolor)

    @property
    def fit(self) -> Optional[Fit]:
        return fit_power_law(self.ns, self.ys) if self.fitted else None


@dataclass
class Track:
    """Rows without a value to draw, marked at their N on a track at the top of the panel (as the OOM rows
    are): `points` (marker, N) in the marker color, hollow or not, and a text beside them, on the side of the
    panel with more room."""

    text: str
    text_color: str
    color: str
    points: List[Tuple[str, int]]
    hollow: bool = False


@dataclass
class Panel:
    title: str
    grid_row: Tuple   # values of the figure's row columns
    grid_col: Tuple   # values of the figure's column columns
    series: List[Series]
    tracks: List[Track] = field(default_factory=list)


@dataclass
class SlopeRow:
    figure: str
    panel: str
    line: str
    quantity: str
    fit: Fit


def _slope_anchor(s: Series, fit: Fit) -> Tuple[float, float]:
    """Geometric middle of the fitted points, on the fitted line."""
    window = [s.ns[i] for i in fit_window(s.ns)]
    x = math.exp(sum(math.log(n) for n in window) / len(window))
    return x, fit.at(x)


def _limits(values: Sequence[float], pad_lo: float, pad_hi: float) -> Tuple[float, float]:
    """log2 limits around positive values, padded by fractions of their span (at least one octave)."""
    lo, hi = math.log2(min(values)), math.log2(max(values))
    span = max(hi - lo, 1.0)
    return 2 ** (lo - pad_lo * span - 0.3), 2 ** (hi + pad_hi * span + 0.3)


def draw_grid(name: str, title: str, panels: Sequence[Panel], row_columns: Sequence[str],
              col_columns: Sequence[str], xlabel: str, ylabel: str,
              legend: Sequence[Tuple[Any, str]],
              hline: Optional[Tuple[float, str]] = None,
              axes: Callable[[Any, str, str], None] = style.loglog_axes,
              legend_columns: Optional[int] = None) -> Tuple[Figure, List[SlopeRow]]:
    """Draws the panels in a grid (rows: distinct grid_row values, columns: distinct grid_col values, both in
    canonical order; more than MAX_COLUMNS columns wrap), with shared log-log axes (set up by `axes`: base 2 and
    bytes by default) and one legend under the grid; hline (y, label) is a dotted reference level in every
    panel; legend_columns (default 3 per panel column) is the most columns of the legend, for long labels: fewer
    where the legend would be wider than the figure (fit_legend_columns). Returns the figure and the fitted slope of
    every series that has one."""
    # A panel is a scaling plot only with a line of at least MIN_SCALING_POINTS sequence lengths: rows of a suite
    # that are not a sweep over N (verification shapes, say) would otherwise each get a panel of one or two points.
    sweeps = [p for p in panels if any(len(s.ns) + len(s.oom) >= MIN_SCALING_POINTS for s in p.series)]
    if not sweeps and len(panels) > MAX_PANELS:
        raise TooManyPanels(f"{len(panels)} panels (one per problem that is not a sweep over N), more than "
                            f"{MAX_PANELS}: the tables hold these rows")
    if len(sweeps) > MAX_SWEEP_PANELS:
        raise TooManyPanels(f"{len(sweeps)} panels, more than {MAX_SWEEP_PANELS}: the tables hold these rows "
                            "(--filter the run, or draw a part of it)")
    panels = sweeps or panels
    rows = sorted({p.grid_row for p in panels}, key=tuple_key(row_columns))
    cols = sorted({p.grid_col for p in panels}, key=tuple_key(col_columns))
    wraps = math.ceil(len(cols) / MAX_COLUMNS)
    nrows, ncols = len(rows) * wraps, min(len(cols), MAX_COLUMNS)

    fig = style.new_figure(ncols, nrows)
    ncol_legend = fit_legend_columns(fig, legend, legend_columns or max(2, 3 * ncols))
    legend_rows = math.ceil(len(legend) / ncol_legend)
    fig.set_figheight(fig.get_figheight() + 0.2 * max(legend_rows - 2, 0))
    fig.suptitle(title)
    grid = fig.add_gridspec(nrows + 1, ncols,
                            height_ratios=[style.PANEL_SIZE[1]] * nrows + [0.2 + 0.2 * legend_rows])

    all_n = [n for p in panels for s in p.series for n in (*s.ns, *s.oom)]
    all_n += [n for p in panels for t in p.tracks for _, n in t.points]
    all_y = [y for p in panels for s in p.series for y in s.ys] + ([hline[0]] if hline else [])
    any_oom = any(s.oom for p in panels for s in p.series) or any(p.tracks for p in panels)
    xlim = _limits(all_n, 0.02, 0.02)
    ylim = _limits(all_y, 0.04, 0.22 if any_oom else 0.06)

    slopes: List[SlopeRow] = []
    first = None
    by_cell = {(p.grid_row, p.grid_col): p for p in panels}
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            panel = by_cell.get((row, col))
            if panel is None:
                continue
            ax = fig.add_subplot(grid[r * wraps + c // MAX_COLUMNS, c % MAX_COLUMNS], sharex=first, sharey=first)
            first = first or ax
            axes(ax, xlabel, ylabel)
            ax.set_title(panel.title)
            if hline:
                ax.axhline(hline[0], color=style.MODEL_GRAY, linestyle=":", linewidth=1.0)
                ax.annotate(hline[1], (0.02, hline[0]), xycoords=ax.get_yaxis_transform(), xytext=(0, 2),
                            textcoords="offset points", ha="left", va="bottom", fontsize=7,
                            color=style.MODEL_GRAY)
            slopes += _draw_panel(ax, name, panel, xlim)
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)

    draw_legend(fig.add_subplot(grid[nrows, :]), legend, ncol_legend)
    return fig, slopes


def fit_legend_columns(fig: Figure, legend: Sequence[Tuple[Any, str]], most: int) -> int:
    """The most columns, at most `most`, in which the legend under the panels (draw_legend) is no wider than the
    figure less LEGEND_MARGIN, as the figure's renderer measures it. A wider legend is cut at the figure's edges,
    and constrained layout squeezes the panels to make room for it: to nothing ("axes sizes collapsed to zero")
    in an error figure of one panel column, whose labels name the bounds."""
    width = (fig.get_figwidth() - LEGEND_MARGIN) * fig.dpi
    renderer = fig.canvas.get_renderer()
    handles, labels = [h for h, _ in legend], [label for _, label in legend]
    for ncol in range(min(len(legend), most), 1, -1):
        trial = fig.legend(handles, labels, ncol=ncol, **LEGEND_STYLE)
        fits = trial.get_window_extent(renderer).width <= width
        trial.remove()
        if fits:
            return ncol
    return 1


def draw_legend(ax, legend: Sequence[Tuple[Any, str]], ncol: int) -> None:
    """The legend (handle, label) centered in `ax`, the row of the grid under the panels, in `ncol` columns."""
    ax.axis("off")
    ax.legend([h for h, _ in legend], [label for _, label in legend], loc="center", ncol=ncol, **LEGEND_STYLE)


def _draw_panel(ax, figure: str, panel: Panel, xlim: Tuple[float, float]) -> List[SlopeRow]:
    slopes: List[SlopeRow] = []
    labels: List[Tuple[str, str, float, float]] = []  # (text, color, log2 x, log2 y) already printed
    tracks: List[Tuple[str, Tuple[int, ...]]] = []     # (text color, N) of the out-of-memory tracks drawn
    for s in panel.series:
        if s.ns:
            ax.plot(s.ns, s.ys, **{"color": s.color, "marker": s.marker, "linestyle": s.linestyle,
                                   "linewidth": 1.0 if s.linestyle != "-" else None, **s.style})
        fit = s.fit
        if fit is not None:
            slopes.append(SlopeRow(figure, panel.title, s.line, s.quantity, fit))
            if s.print_slope:
                x, y = _slope_anchor(s, fit)
                text, color = f"slope {fit.slope:.2f}", s.label_color or s.color
                if not any(t == text and col == color and abs(lx - math.log2(x)) < 0.6
                           and abs(ly - math.log2(y)) < 0.6 for t, col, lx, ly in labels):
                    labels.append((text, color, math.log2(x), math.log2(y)))
                    below = s.label_below
                    ax.annotate(text, (x, y), xytext=(5, -5) if below else (-5, 5), textcoords="offset points",
                                ha="left" if below else "right", va="top" if below else "bottom",
                                color=color, fontsize=7,
                                bbox=dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none",
                                          alpha=0.75))
        oom_color = s.oom_color or s.color
        if s.oom and (oom_color, tuple(s.oom)) not in tracks:  # lines alike (fp16, bf16) share a track
            y = OOM_TRACK_TOP - OOM_TRACK_STEP * len(tracks)
            tracks.append((oom_color, tuple(s.oom)))
            ax.plot(s.oom, [y] * len(s.oom), transform=ax.get_xaxis_transform(), linestyle="none",
                    marker="x", markersize=6, markeredgewidth=1.6, color=style.OOM_COLOR, clip_on=False)
            ax.annotate("OOM", (s.oom[0], y), xycoords=ax.get_xaxis_transform(), xytext=(-6, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=7, color=oom_color,
                        fontweight="bold")
    for track in panel.tracks:
        y = OOM_TRACK_TOP - OOM_TRACK_STEP * len(tracks)
        tracks.append((track.text_color, tuple(n for _, n in track.points)))
        for marker in sorted({m for m, _ in track.points}):
            ns = sorted({n for m, n in track.points if m == marker})
            ax.plot(ns, [y] * len(ns), transform=ax.get_xaxis_transform(), linestyle="none", marker=marker,
                    markersize=6, markeredgewidth=1.6 if marker == "x" else 1.2, color=track.color,
                    markerfacecolor="none" if track.hollow else track.color, clip_on=False)
        first, last = min(n for _, n in track.points), max(n for _, n in track.points)
        left = math.log(first / xlim[0]) >= math.log(xlim[1] / last)  # the text on the side with more room
        ax.annotate(track.text, (first if left else last, y), xycoords=ax.get_xaxis_transform(),
                    xytext=(-6 if left else 6, 0), textcoords="offset points", ha="right" if left else "left",
                    va="center", fontsize=7, color=track.text_color, fontweight="bold")
    return slopes


def line_handle(color: str, marker: Optional[str] = None, linestyle: str = "-") -> Line2D:
    return Line2D([], [], color=color, marker=marker, linestyle=linestyle)


def oom_handle() -> Line2D:
    return Line2D([], [], color=style.OOM_COLOR, marker="x", linestyle="none", markersize=6, markeredgewidth=1.6)
