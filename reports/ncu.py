"""Nsight Compute profiles side by side: python3 -m reports.ncu OUT_DIR NAME=RAW.csv[,SOURCE.csv] ...

Each NAME is one profiled kernel launch, given by two exports of its report (`ncu --set full ... -o NAME`):

    ncu --import NAME.ncu-rep --page raw --csv > NAME_raw.csv                             # every metric
    ncu --import NAME.ncu-rep --page source --csv --print-source sass > NAME_source.csv   # per SASS instruction

(the source export is optional). Writes OUT_DIR/ncu_summary.csv (one row per NAME: the metrics of SUMMARY, the
duration in ms) and, where source exports are given, OUT_DIR/ncu_instruction_mix.csv (one row per NAME and
instruction class: instructions executed and warp-stall samples by reason), and prints both as Markdown tables.

The classes (CLASSES) group SASS opcodes by what they do in an attention kernel: the tensor-core GEMMs (HGMMA),
their fences and waits (WARPGROUP), exp2 (MUFU), the other fp32 math of the softmax, the uniform datapath
(descriptors, addresses, loop counters: U* opcodes and R2UR), and control (branches, mbarrier operations and
named barriers: BRA, SYNCS, BAR), everything else in "other".

Exit status 0 when written, 2 on malformed input (one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a file: import the package from its parent folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "reports"  # noqa: A001 (so that the relative imports below resolve)

from .data import InputError  # noqa: E402

# column -> Nsight Compute metric (the names of the raw page, Hopper; ncu 2025.3)
SUMMARY = {
    "duration_ms": "gpu__time_duration.sum",
    "tensor_pipe_active_pct": "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "xu_pipe_pct": "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_elapsed",
    "alu_pipe_pct": "sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "issue_active_pct": "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "instructions": "smsp__inst_executed.sum",
    "sm_active_cycles": "sm__cycles_active.avg",
    "elapsed_cycles": "gpc__cycles_elapsed.max",
    "stall_wait_per_issue": "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio",
    "stall_barrier_per_issue": "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
    "stall_long_scoreboard_per_issue": "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
    "grid_size": "launch__grid_size",
    "registers_per_thread": "launch__registers_per_thread",
}
TIME_UNITS = {"ns": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3, "second": 1e3}
CLASSES = ("hgmma", "warpgroup", "mufu", "fp32", "uniform", "control", "other")
FP32 = {"FADD", "FMUL", "FFMA", "FMNMX"}
STALL_PREFIX = "stall_"
NOT_ISSUED = "(Not Issued)"


def number(path: str, what: str, text: str) -> float:
    """A field of an export as a number (thousands separators dropped). Raises InputError naming `what`."""
    try:
        return float(text.replace(",", ""))
    except ValueError:
        raise InputError(path, f"{what}: {text!r} is not a number") from None


def read_raw(path: str) -> Dict[str, float]:
    """The SUMMARY columns of one launch from a `--page raw --csv` export (rows: names, units, the launch's values);
    the duration converted to ms. Raises InputError."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        raise InputError(path, e.strerror or str(e)) from None
    if len(rows) < 3:
        raise InputError(path, "expected a raw-page export: metric names, units, then one launch's values")
    if len(rows) > 3:
        raise InputError(path, f"{len(rows) - 2} launches; export one (ncu --launch-count 1)")
    names, units, values = rows
    if not (len(names) == len(units) == len(values)):
        raise InputError(path, "rows of different lengths (names, units, values)")
    column = {n: i for i, n in enumerate(names)}
    out = {}
    for key, metric in SUMMARY.items():
        if metric not in column:
            raise InputError(path, f"metric {metric!r} missing (profiled with --set full?)")
        i = column[metric]
        value = number(path, metric, values[i])
        if key == "duration_ms":
            if units[i] not in TIME_UNITS:
                raise InputError(path, f"{metric}: unit {units[i]!r}, expected one of {', '.join(TIME_UNITS)}")
            value *= TIME_UNITS[units[i]]
        out[key] = value
    return out


def opcode_class(sass: str) -> Optional[str]:
    """The class of one SASS line (`@!P0 BRA ...`, `HGMMA.64x128x16.F32.BF16 ...`); None for an empty line."""
    words = sass.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    if not words:
        return None
    op = words[0].split(".")[0]
    if op == "HGMMA":
        return "hgmma"
    if op == "WARPGROUP":
        return "warpgroup"
    if op == "MUFU":
        return "mufu"
    if op in FP32:
        return "fp32"
    if op.startswith("U") or op == "R2UR":
        return "uniform"
    if op in ("BRA", "SYNCS", "BAR"):
        return "control"
    return "other"


def read_source(path: str) -> Tuple[Dict[str, float], Dict[str, Counter]]:
    """Instructions executed and warp-stall samples (by reason) per class, from a `--page source --csv
    --print-source sass` export of one kernel. Raises InputError."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise InputError(path, e.strerror or str(e)) from None
    header_at = next((i for i, r in enumerate(rows[:5]) if "Source" in r and "Instructions Executed" in r), None)
    if header_at is None:
        raise InputError(path, "no 'Source' and 'Instructions Executed' columns (a source-page export with "
                               "--print-source sass?)")
    header = rows[header_at]
    source, executed = header.index("Source"), header.index("Instructions Executed")
    stalls = [(i, h[len(STALL_PREFIX):]) for i, h in enumerate(header)
              if h.startswith(STALL_PREFIX) and NOT_ISSUED not in h]
    counts: Dict[str, float] = defaultdict(float)
    samples: Dict[str, Counter] = defaultdict(Counter)
    for line, row in enumerate(rows[header_at + 1:], start=header_at + 2):
        if len(row) != len(header):
            raise InputError(path, f"line {line}: {len(row)} fields, the header has {len(header)}")
        kind = opcode_class(row[source])
        if kind is None:
            continue
        counts[kind] += number(path, f"line {line} Instructions Executed", row[executed] or "0")
        for i, reason in stalls:
            samples[kind][reason] += number(path, f"line {line} {header[i]}", row[i] or "0")
    if not counts:
        raise InputError(path, "no instructions")
    return dict(counts), dict(samples)


def parse_spec(spec: str) -> Tuple[str, str, Optional[str]]:
    """NAME=RAW.csv[,SOURCE.csv] -> (name, raw, source or None). Raises ValueError."""
    name, sep, files = spec.partition("=")
    paths = files.split(",")
    if not sep or not name or not paths[0] or len(paths) > 2:
        raise ValueError(f"{spec!r}: expected NAME=RAW.csv or NAME=RAW.csv,SOURCE.csv")
    return name, paths[0], paths[1] if len(paths) == 2 else None


def _format(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"


def write_tables(out_dir: str, specs: List[Tuple[str, str, Optional[str]]]) -> List[str]:
    """Writes ncu_summary.csv (and ncu_instruction_mix.csv); returns the Markdown lines printed."""
    summary = [(name, read_raw(raw)) for name, raw, _ in specs]
    mixes = [(name, read_source(src)) for name, _, src in specs if src]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ncu_summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name"] + list(SUMMARY))
        for name, values in summary:
            w.writerow([name] + [_format(values[k]) for k in SUMMARY])
    lines = ["| name | " + " | ".join(SUMMARY) + " |", "| --- " * (len(SUMMARY) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_format(v[k]) for k in SUMMARY) + " |" for name, v in summary]
    if mixes:
        reasons = sorted({r for _, (_, s) in mixes for c in s.values() for r in c})
        with open(os.path.join(out_dir, "ncu_instruction_mix.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "class", "instructions", "stall_samples"] + [f"stall_{r}" for r in reasons])
            for name, (counts, samples) in mixes:
                for kind in CLASSES:
                    s = samples.get(kind, Counter())
                    w.writerow([name, kind, f"{counts.get(kind, 0):.0f}", f"{sum(s.values()):.0f}"]
                               + [f"{s[r]:.0f}" for r in reasons])
        lines += ["", "| name | " + " | ".join(f"{c}: M instr. (stall samples %)" for c in CLASSES) + " |",
                  "| --- " * (len(CLASSES) + 1) + "|"]
        for name, (counts, samples) in mixes:
            total = sum(sum(c.values()) for c in samples.values()) or 1.0
            cells = [f"{counts.get(c, 0) / 1e6:.1f} ({100 * sum(samples.get(c, Counter()).values()) / total:.0f}%)"
                     for c in CLASSES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("profiles", nargs="+", metavar="NAME=RAW.csv[,SOURCE.csv]")
    args = parser.parse_args(argv)
    try:
        specs = [parse_spec(s) for s in args.profiles]
    except ValueError as e:
        print(f"reports.ncu: {e}", file=sys.stderr)
        return 2
    try:
        lines = write_tables(args.out_dir, specs)
    except InputError as e:
        print(f"reports.ncu: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
