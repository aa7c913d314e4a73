"""The figure of `flashlab compare A B --csv FILE`: python3 -m reports.compare FILE [--out DIR].

Left: the time ratio B / A of every row timed in both runs, rows sorted by ratio, one marker color per verdict
(faster, slower, same, unclear: `flashlab compare` decides it from each row's p20-p80 range); the line at 1 and the
rows' labels beside them. Right: the error ratio B / A (max abs) of each output tensor on the same rows, on a
logarithmic axis. Writes compare.png and compare.svg (default: beside FILE).

Exit status 0 when the figure is written, 2 on malformed input (one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a file: import the package from its parent folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "reports"  # noqa: A001 (so that the relative imports below resolve)

from . import style  # noqa: E402
from .data import InputError, read_table  # noqa: E402

VERDICT_COLORS = {"faster": "#2ca02c", "slower": "#d62728", "same": "#7f7f7f", "unclear": "#ff7f0e"}
TENSORS = ("o", "lse", "dq", "dk", "dv")
TENSOR_LABELS = {"o": "O", "lse": "LSE", "dq": "dQ", "dk": "dK", "dv": "dV"}
REQUIRED = ("key", "variant", "pass", "dtype", "seqlen_q", "head_dim", "time_ratio", "verdict")
MAX_ROWS = 400  # beyond, the row labels are left out (the markers stay)


def _number(text: str) -> Optional[float]:
    try:
        return float(text) if text != "" else None
    except ValueError:
        return None


def load(path: str) -> List[Dict[str, str]]:
    """The rows of a compare CSV. Raises InputError."""
    return read_table(path, REQUIRED, "flashlab compare --csv")


def label(row: Dict[str, str]) -> str:
    causal = " causal" if row.get("causal") == "1" else ""
    return f"{row['variant']} {row['pass']} {row['dtype']} N={row['seqlen_q']} d={row['head_dim']}{causal}"


def draw(rows: List[Dict[str, str]], out_dir: str, title: str) -> List[str]:
    timed = [r for r in rows if _number(r["time_ratio"]) is not None]
    if not timed:
        raise InputError(title, "no row is timed in both runs: nothing to draw")
    timed.sort(key=lambda r: (_number(r["time_ratio"]), r["key"]))
    n = len(timed)
    with style.fixed_style():
        fig = style.new_figure(2, 1)
        fig.set_size_inches(2 * style.PANEL_SIZE[0] + 2.4, max(style.PANEL_SIZE[1], 0.16 * n + 1.4))
        time_ax, err_ax = fig.subplots(1, 2, sharey=True)
        ys = list(range(n))
        for verdict, color in VERDICT_COLORS.items():
            pts = [(float(r["time_ratio"]), y) for y, r in zip(ys, timed) if r["verdict"] == verdict]
            if pts:
                time_ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, s=14, label=verdict, zorder=3)
        time_ax.axvline(1.0, color=style.MODEL_GRAY, linewidth=0.8)
        time_ax.set_xlabel("time B / A (median)")
        time_ax.set_title("time ratio per row (left of 1: B faster)")
        if n <= MAX_ROWS:
            time_ax.set_yticks(ys)
            time_ax.set_yticklabels([label(r) for r in timed], fontsize=6)
        else:
            time_ax.set_yticks([])
        time_ax.legend(loc="lower right", fontsize=7)
        markers = dict(zip(TENSORS, ("o", "s", "^", "v", "D")))
        drawn = False
        for i, t in enumerate(TENSORS):
            col = f"err_{t}_ratio"
            pts = [(_number(r.get(col, "")), y) for y, r in zip(ys, timed)]
            pts = [(x, y) for x, y in pts if x is not None and x > 0 and math.isfinite(x)]
            if pts:
                drawn = True
                err_ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[t], s=12,
                               color=style.COLORS[i], label=TENSOR_LABELS[t], zorder=3)
        err_ax.axvline(1.0, color=style.MODEL_GRAY, linewidth=0.8)
        err_ax.set_xscale("log")
        err_ax.set_xlabel("max abs error B / A")
        err_ax.set_title("error ratio per tensor")
        if drawn:
            err_ax.legend(loc="lower right", fontsize=7)
        fig.suptitle(title, fontsize=9)
        return style.save(fig, out_dir, "compare")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m reports.compare",
                                     description="The figure of a `flashlab compare --csv` table.")
    parser.add_argument("csv", metavar="FILE", help="CSV written by flashlab compare A B --csv FILE")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: FILE's folder)")
    parser.add_argument("--title", default=None, help="figure title (default: the file's name)")
    args = parser.parse_args(argv)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.csv))
    try:
        rows = load(args.csv)
        os.makedirs(out_dir, exist_ok=True)
        files = draw(rows, out_dir, args.title or os.path.basename(args.csv))
    except InputError as e:
        print(f"reports.compare: {e}", file=sys.stderr)
        return 2
    print(f"reports.compare: wrote {', '.join(os.path.join(out_dir, f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
