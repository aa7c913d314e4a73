"""Two kernels' Nsight Compute profiles as one figure: python3 -m reports.ncu_figure DIR A:B [A:B ...] [--out DIR]

Reads DIR/ncu_summary.csv and, where present, DIR/ncu_instruction_mix.csv (both written by `python3 -m reports.ncu`)
and draws one row of panels per pair A:B of their names (e.g. ncu_flash3_d128_4096:ncu_cudnn_d128_4096):
- where the cycles go: the tensor, XU and ALU pipes' activity, the issue slots used and the SMs' active share of
  the elapsed cycles, A's bar above B's;
- instructions executed per class of opcode (reports/ncu.py CLASSES), in millions;
- the share of each class in the kernel's warp-stall samples: where its warps wait.
The row's title gives both durations. Without an instruction mix for both kernels of a pair, that row's last two
panels say so. Writes ncu_compare.png and ncu_compare.svg (default: into DIR).

Exit status 0 when the figure is written, 2 on malformed input (one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a file: import the package from its parent folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "reports"  # noqa: A001 (so that the relative imports below resolve)

from . import style  # noqa: E402
from .data import InputError, read_table  # noqa: E402
from .ncu import CLASSES, number  # noqa: E402

# (label, value from a summary row in % of the elapsed cycles)
PIPES = (
    ("tensor pipe", lambda r: r["tensor_pipe_active_pct"]),
    ("XU pipe (MUFU)", lambda r: r["xu_pipe_pct"]),
    ("ALU pipe", lambda r: r["alu_pipe_pct"]),
    ("issue slots", lambda r: r["issue_active_pct"]),
    ("SMs active", lambda r: 100.0 * r["sm_active_cycles"] / r["elapsed_cycles"]),
)
NEEDED = ("name", "duration_ms", "tensor_pipe_active_pct", "xu_pipe_pct", "alu_pipe_pct", "issue_active_pct",
          "sm_active_cycles", "elapsed_cycles")
MIX_NEEDED = ("name", "class", "instructions", "stall_samples")
BAR = 0.38  # height of one kernel's bar; a pair's two bars fill 0.76 of a category's row


def load(folder: str) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Dict[str, Tuple[float, float]]]]:
    """({name: summary values}, {name: {class: (instructions, stall samples)}}) of a folder reports.ncu wrote;
    the mix is empty without ncu_instruction_mix.csv. Raises InputError."""
    path = os.path.join(folder, "ncu_summary.csv")
    summary = {}
    for line, row in enumerate(read_table(path, NEEDED, "python3 -m reports.ncu"), start=2):
        summary[row["name"]] = {k: number(path, f"line {line}, {k}", row[k]) for k in NEEDED if k != "name"}
    if not summary:
        raise InputError(path, "no profile")
    mix: Dict[str, Dict[str, Tuple[float, float]]] = {}
    path = os.path.join(folder, "ncu_instruction_mix.csv")
    if os.path.exists(path):
        for line, row in enumerate(read_table(path, MIX_NEEDED, "python3 -m reports.ncu"), start=2):
            mix.setdefault(row["name"], {})[row["class"]] = (
                number(path, f"line {line}, instructions", row["instructions"]),
                number(path, f"line {line}, stall_samples", row["stall_samples"]))
    return summary, mix


def parse_pair(text: str) -> Tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b or ":" in b:
        raise ValueError(f"{text!r}: expected A:B, two profile names")
    return a, b


def short(name: str) -> str:
    return name.removeprefix("ncu_")


def _bars(ax, labels: List[str], a: List[float], b: List[float], names: Tuple[str, str], unit: str) -> None:
    ys = list(range(len(labels)))
    colors = (style.COLORS[0], style.COLORS[1])
    for offset, values, name, color in ((-BAR / 2, a, names[0], colors[0]), (BAR / 2, b, names[1], colors[1])):
        bars = ax.barh([y + offset for y in ys], values, height=BAR, color=color, label=short(name))
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize=6)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.margins(x=0.18)


def draw(summary, mix, pairs: List[Tuple[str, str]], out_dir: str, source: str) -> List[str]:
    for a, b in pairs:
        for name in (a, b):
            if name not in summary:
                raise InputError(os.path.join(source, "ncu_summary.csv"),
                                 f"no profile named {name!r} (has: {', '.join(sorted(summary))})")
    with style.fixed_style():
        fig = style.new_figure(3, len(pairs))
        axes = fig.subplots(len(pairs), 3, squeeze=False)
        for row, (a, b) in enumerate(pairs):
            sa, sb = summary[a], summary[b]
            pipes, cycles, stalls = axes[row]
            _bars(pipes, [p[0] for p in PIPES], [p[1](sa) for p in PIPES], [p[1](sb) for p in PIPES], (a, b),
                  "% of elapsed cycles")
            pipes.set_title(f"{short(a)}: {sa['duration_ms']:.3g} ms, {short(b)}: {sb['duration_ms']:.3g} ms",
                            fontsize=8, loc="left")
            pipes.set_xlim(0, 150)  # the legend sits right of the bars (at most 100%) and their labels
            pipes.legend(loc="center right", fontsize=6)
            if a in mix and b in mix:
                ia = [mix[a].get(c, (0.0, 0.0))[0] / 1e6 for c in CLASSES]
                ib = [mix[b].get(c, (0.0, 0.0))[0] / 1e6 for c in CLASSES]
                _bars(cycles, list(CLASSES), ia, ib, (a, b), "instructions executed (M)")
                share = []
                for name in (a, b):
                    total = sum(s for _, s in mix[name].values()) or 1.0
                    share.append([100.0 * mix[name].get(c, (0.0, 0.0))[1] / total for c in CLASSES])
                _bars(stalls, list(CLASSES), share[0], share[1], (a, b), "% of warp-stall samples")
            else:
                for ax in (cycles, stalls):
                    ax.text(0.5, 0.5, "no instruction mix for both\n(a source export for each)", ha="center",
                            va="center", fontsize=7, transform=ax.transAxes)
                    ax.set_axis_off()
            if row == 0:
                cycles.set_title("instructions per class", fontsize=8)
                stalls.set_title("where the warps wait", fontsize=8)
        fig.suptitle("Nsight Compute profiles side by side", fontsize=9)
        style.footer(fig, f"{source}: ncu_summary.csv, ncu_instruction_mix.csv (python3 -m reports.ncu)")
        return style.save(fig, out_dir, "ncu_compare")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m reports.ncu_figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", metavar="DIR", help="the folder reports.ncu wrote its tables into")
    parser.add_argument("pairs", nargs="+", metavar="A:B", help="two profile names per panel row")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: DIR)")
    args = parser.parse_args(argv)
    try:
        pairs = [parse_pair(p) for p in args.pairs]
    except ValueError as e:
        print(f"reports.ncu_figure: {e}", file=sys.stderr)
        return 2
    out_dir = args.out or args.folder
    try:
        summary, mix = load(args.folder)
        os.makedirs(out_dir, exist_ok=True)
        files = draw(summary, mix, pairs, out_dir, os.path.basename(os.path.normpath(args.folder)))
    except InputError as e:
        print(f"reports.ncu_figure: {e}", file=sys.stderr)
        return 2
    print(f"reports.ncu_figure: wrote {', '.join(os.path.join(out_dir, f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
