"""The figure of a training run (experiments/training/train_llama.py): python3 -m reports.training RUN_DIR [--out DIR].

RUN_DIR holds losses.csv (impl, step, loss, tokens) and summary.json (config, device, commit, date and a run per
implementation). Writes training.png and training.svg (default: into RUN_DIR): left, the loss of every step of each
implementation overlaid (thin) with its centred moving average (thick), on a log axis, and the data's Markov
entropy as a dotted level where recorded; under it, each loss minus sdpa's step by step; right, tokens/s and peak
memory (torch.cuda.max_memory_allocated) of each implementation as bars with their values. The title names the
model and the device, the footer the device, commit and date of the run. The same files give the same bytes
(style.py: fixed style, no clock, sorted order).

Exit status 0 when written, 2 on malformed input (one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from . import style
from .data import InputError, run_stamp

LOSSES_FILE = "losses.csv"
SUMMARY_FILE = "summary.json"
NAME = "training"
IMPL_ORDER = ("flashlab", "sdpa", "eager")  # the colors follow this order, whatever the file's order
SMOOTH_FRACTION = 1 / 30                     # the moving average spans this share of the steps (odd, >= 1)


def load(run_dir: str) -> Tuple[Dict[str, List[Tuple[int, float]]], Dict[str, Any]]:
    """({impl: [(step, loss)] sorted by step}, summary.json). Raises InputError."""
    losses_path, summary_path = os.path.join(run_dir, LOSSES_FILE), os.path.join(run_dir, SUMMARY_FILE)
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    except OSError as e:
        raise InputError(summary_path, f"cannot be read ({e.strerror})") from e
    except ValueError as e:
        raise InputError(summary_path, f"not JSON ({e})") from e
    if not isinstance(summary, dict) or not isinstance(summary.get("runs"), list):
        raise InputError(summary_path, "not a training summary (no list 'runs')")
    curves: Dict[str, List[Tuple[int, float]]] = {}
    try:
        with open(losses_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("impl", "step", "loss") if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(losses_path, "column " + ", ".join(f"'{c}'" for c in missing) + " missing")
            for line, row in enumerate(reader, start=2):
                try:
                    curves.setdefault(row["impl"], []).append((int(row["step"]), float(row["loss"])))
                except (TypeError, ValueError) as e:
                    raise InputError(losses_path, f"line {line}: step or loss does not parse ({e})") from e
    except OSError as e:
        raise InputError(losses_path, f"cannot be read ({e.strerror})") from e
    if not curves:
        raise InputError(losses_path, "no losses")
    return {impl: sorted(points) for impl, points in curves.items()}, summary


def ordered_impls(names: Sequence[str]) -> List[str]:
    return sorted(set(names), key=lambda n: (IMPL_ORDER.index(n) if n in IMPL_ORDER else len(IMPL_ORDER), n))


def moving_average(values: Sequence[float], window: int) -> List[float]:
    """Centred mean over `window` values (odd), over the values there are at the ends; non-finite values skipped."""
    half = window // 2
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - half):i + half + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part else float("nan"))
    return out


def label(impl: str, run: Optional[Dict[str, Any]]) -> str:
    variant = (run or {}).get("variant")
    return f"{impl} ({variant})" if variant else impl


def caption(summary: Dict[str, Any]) -> str:
    """'NVIDIA H200, commit 0123456789ab, 2026-12-01' (the footer)."""
    stamp = run_stamp({"device": summary.get("device"), "git_commit": summary.get("git_commit")})
    date = str(summary.get("date") or "")[:10]
    return f"{stamp}, {date}" if date else f"{stamp}, date not recorded"


def title(summary: Dict[str, Any]) -> str:
    config = summary.get("config") or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    parts = []
    if model:
        parts.append(f"Llama {model.get('layers')} layers, hidden {model.get('hidden')}, "
                     f"H={model.get('heads')}/{model.get('kv_heads')} (GQA), d={model.get('head_dim')}")
    if data:
        parts.append(f"batch {data.get('batch')} x {data.get('seqlen')} (lengths {data.get('min_len')}-"
                     f"{data.get('seqlen')}, right padding)")
    if config.get("dtype"):
        parts.append(str(config["dtype"]))
    device = (summary.get("device") or {}).get("name")
    first = "Training loss, tokens/s and peak memory by attention implementation"
    return "\n".join([first, ", ".join(parts), str(device or "device not recorded")])


def draw(curves: Dict[str, List[Tuple[int, float]]], summary: Dict[str, Any]) -> Figure:
    runs = {r.get("impl"): r for r in summary["runs"] if isinstance(r, dict)}
    impls = ordered_impls(list(curves) + [i for i in runs if isinstance(i, str)])
    colors = {impl: style.COLORS[i % len(style.COLORS)] for i, impl in enumerate(impls)}
    fig = Figure(figsize=(11.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, width_ratios=(2.2, 1.0), height_ratios=(1.0, 1.0, 0.8))
    ax = fig.add_subplot(grid[:2, 0])
    steps = max((len(points) for points in curves.values()), default=1)
    window = max(1, round(steps * SMOOTH_FRACTION)) | 1
    for impl in impls:
        points = curves.get(impl)
        if not points:
            continue
        x, y = [s for s, _ in points], [v for _, v in points]
        final = (runs.get(impl) or {}).get("final_loss_mean10")
        text = label(impl, runs.get(impl)) + (f", mean of the last 10 steps {final:.3f}"
                                               if isinstance(final, (int, float)) else "")
        if window > 1:
            ax.plot(x, y, color=colors[impl], linewidth=0.6, alpha=0.35)
            y = moving_average(y, window)
        ax.plot(x, y, color=colors[impl], linewidth=1.6, label=text)
    entropy = ((summary.get("config") or {}).get("data") or {}).get("markov_entropy_nats")
    if isinstance(entropy, (int, float)) and math.isfinite(entropy) and entropy > 0:
        ax.axhline(entropy, color=style.MODEL_GRAY, linestyle=":", linewidth=1.0,
                   label=f"the data's Markov entropy {entropy:.3f} (a model that does not copy)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"loss per step (thin) and its {window}-step centred mean" if window > 1 else "loss per step")
    ax.legend(loc="upper right")  # a falling curve leaves it empty
    ax.tick_params(labelbottom=False)
    difference_panel(fig.add_subplot(grid[2, 0], sharex=ax), impls, curves, colors)
    bar_panel(fig.add_subplot(grid[0, 1]), impls, runs, colors, "tokens_per_s", "tokens/s (valid tokens)",
              thousands)
    bar_panel(fig.add_subplot(grid[1:, 1]), impls, runs, colors, "peak_allocated_bytes",
              "peak memory (max_memory_allocated)", style.format_bytes, scale=2.0 ** 30, unit="GiB")
    fig.suptitle(title(summary), fontsize=9)
    return fig


def difference_panel(ax, impls: Sequence[str], curves: Dict[str, List[Tuple[int, float]]],
                     colors: Dict[str, str]) -> None:
    """Each implementation's loss minus the reference's (sdpa, else the first) at the steps both have."""
    reference = "sdpa" if "sdpa" in curves else next((i for i in impls if i in curves), None)
    ax.set_xlabel("step")
    if reference is None:
        return
    base = dict(curves[reference])
    ax.axhline(0.0, color=colors[reference], linewidth=1.0)
    for impl in impls:
        if impl == reference or impl not in curves:
            continue
        x = [s for s, _ in curves[impl] if s in base]
        ax.plot(x, [v - base[s] for s, v in curves[impl] if s in base], color=colors[impl], linewidth=0.8)
    ax.set_ylabel(f"loss − {reference} loss")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def thousands(value: float) -> str:
    """Tokens/s: 412.3K, 950."""
    return f"{value / 1e3:,.1f}K" if value >= 1e3 else f"{value:,.0f}"


def bar_panel(ax, impls: Sequence[str], runs: Dict[str, Dict[str, Any]], colors: Dict[str, str], key: str,
              name: str, fmt, scale: float = 1.0, unit: str = "") -> None:
    """Horizontal bars of runs[impl][key] with the value written beside; 'not measured' or the status where none."""
    values = [(runs.get(impl) or {}).get(key) for impl in impls]
    top = max((v for v in values if isinstance(v, (int, float)) and v > 0), default=0.0)
    for i, (impl, value) in enumerate(zip(impls, values)):
        run = runs.get(impl) or {}
        if isinstance(value, (int, float)) and value > 0 and run.get("status", "ok") == "ok":
            ax.barh(i, value / scale, color=colors[impl], height=0.6)
            ax.text(value / scale + top / scale * 0.02, i, fmt(value), va="center", fontsize=7.5)
        else:
            status = str(run.get("status") or "not run")
            why = "not measured" if status == "ok" else status.split(":")[0]
            ax.text(0.0 if top else 0.02, i, f" {why}", va="center", fontsize=7.5, color=style.MODEL_GRAY)
    ax.set_yticks(range(len(impls)), [label(i, runs.get(i)) for i in impls])
    ax.set_ylim(len(impls) - 0.5, -0.5)  # the first on top
    ax.set_xlim(0, (top / scale) * 1.35 if top else 1.0)
    ax.set_title(name)
    if unit:
        ax.set_xlabel(unit)
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: thousands(v) if v else "0"))
    ax.grid(axis="y", visible=False)


def make_figure(run_dir: str, out_dir: Optional[str] = None) -> List[str]:
    """Writes training.png and training.svg into out_dir (default run_dir); returns their paths."""
    curves, summary = load(run_dir)
    out_dir = out_dir or run_dir
    os.makedirs(out_dir, exist_ok=True)
    with style.fixed_style():
        fig = draw(curves, summary)
        style.footer(fig, caption(summary))
        files = style.save(fig, out_dir, NAME)
    return [os.path.join(out_dir, f) for f in files]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m reports.training",
                                     description="The loss curves, tokens/s and peak memory of a training run.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder holding losses.csv and summary.json")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        files = make_figure(args.run_dir, args.out)
    except InputError as e:
        print(f"reports.training: {e}", file=sys.stderr)
        return 2
    print(f"reports.training: wrote {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
