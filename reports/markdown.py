"""report.md: the figures, the run's provenance, row counts by status, and the fitted slopes.

The text depends only on the input files (no clock, no paths), so the same run gives the same page.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .data import STATUSES, Results, order_key, ordered
from .fit import MIN_POINTS
from .style import format_bytes, format_n

if TYPE_CHECKING:  # figures imports the figure modules, which use the tables below
    from .figures import Outcome

RUN_KEYS = ("suite", "run_id", "suite_file", "suite_hash", "seed", "flops_convention", "git_commit", "started",
            "finished")
DEVICE_KEYS = ("name", "sm_count", "l2_bytes", "memory_bytes", "compute_capability", "driver_version",
               "runtime_version", "clocks_before", "clocks_after")
NOT_RECORDED = "(not recorded)"


def cell(value: Any) -> str:
    """A table cell: text with the characters that would break a Markdown table escaped."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    text = cell(text)
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else ""


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> List[str]:
    """Markdown table lines; align holds 'l' or 'r' per column."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _value(mapping: Dict[str, Any], key: str) -> str:
    if key not in mapping or mapping[key] is None or mapping[key] == "":
        return NOT_RECORDED
    value = mapping[key]
    if key in ("l2_bytes", "memory_bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{code(value)} ({format_bytes(value)})"
    return code(value)


def provenance(run: Optional[Dict[str, Any]]) -> List[str]:
    if run is None:
        return ["run.json not found: the run's provenance is unknown."]
    lines = [f"- **{key}**: {_value(run, key)}" for key in RUN_KEYS]
    extra = sorted(k for k in run if k not in RUN_KEYS and k not in ("command", "device"))
    lines += [f"- **{key}**: {_value(run, key)}" for key in extra]
    lines += ["", "Command:", "", "```", str(run.get("command", NOT_RECORDED)).replace("```", "'''"), "```", ""]
    device = run.get("device")
    if isinstance(device, dict):
        rows = [[key, _value(device, key)] for key in DEVICE_KEYS]
        rows += [[key, _value(device, key)] for key in sorted(device) if key not in DEVICE_KEYS]
        lines += ["Device:", ""] + table(["field", "value"], rows)
    elif "device" in run and device is None:
        lines.append("Device: none (a CPU-only run).")
    else:
        lines.append(f"Device: {NOT_RECORDED}.")
    return lines


def status_counts(results: Results) -> List[str]:
    statuses = list(STATUSES) + ordered({r["status"] for r in results.rows} - set(STATUSES), "status")
    variants = results.distinct("variant")
    rows = []
    for v in variants:
        counts = [sum(1 for r in results.rows if r["variant"] == v and r["status"] == s) for s in statuses]
        rows.append([cell(v)] + [str(n) for n in counts] + [str(sum(counts))])
    totals = [sum(1 for r in results.rows if r["status"] == s) for s in statuses]
    rows.append(["**all**"] + [f"**{n}**" for n in totals] + [f"**{len(results.rows)}**"])
    return table(["variant"] + [cell(s) for s in statuses] + ["rows"], rows, "l" + "r" * (len(statuses) + 1))


def _n_list(ns: Sequence[int]) -> str:
    known = sorted({n for n in ns if n is not None})
    return ", ".join([format_n(n) or str(n) for n in known] + (["?"] if None in ns else []))


def not_ok(results: Results) -> List[str]:
    """Rows that are not ok, grouped by (status, variant, pass, dtype, head_dim, reason), with their N."""
    columns = ("status", "variant", "pass", "dtype", "head_dim")
    groups: Dict[tuple, List[int]] = {}
    for r in results.rows:
        if r["status"] != "ok":
            key = tuple(r.get(c) for c in columns) + (r.get("reason", "") or "",)
            groups.setdefault(key, []).append(r["seqlen_q"])
    if not groups:
        return ["Every row is ok."]
    keys = [order_key(c) for c in columns] + [order_key("reason")]
    rows = [[cell("" if v is None else str(v)) for v in key[:-1]] + [_n_list(groups[key]), cell(key[-1])]
            for key in sorted(groups, key=lambda k: tuple(f(v) for f, v in zip(keys, k)))]
    return table(["status", "variant", "pass", "dtype", "d", "N", "reason"], rows)


def slopes(outcomes: Sequence[Outcome]) -> List[str]:
    """One table per figure: a row per (panel, line), a column per quantity; each cell 'slope (N range)'."""
    lines: List[str] = []
    for o in outcomes:
        if not o.slopes:
            continue
        quantities: List[str] = []
        cells: Dict[tuple, Dict[str, str]] = {}
        for s in o.slopes:
            if s.quantity not in quantities:
                quantities.append(s.quantity)
            f = s.fit
            cells.setdefault((s.panel, s.line), {})[s.quantity] = \
                f"{f.slope:.2f} ({format_n(f.n_lo)}–{format_n(f.n_hi)}, {f.points})"
        rows = [[cell(panel), cell(line)] + [by.get(q, "") for q in quantities]
                for (panel, line), by in cells.items()]
        lines += [f"`{o.spec.name}`:", ""]
        lines += table(["panel", "line"] + [cell(q) for q in quantities], rows, "ll" + "r" * len(quantities))
        lines.append("")
    return lines or [f"No line has the {MIN_POINTS} points a slope needs.", ""]


def write(path: str, results: Results, run: Optional[Dict[str, Any]], outcomes: Sequence[Outcome]) -> None:
    suite = (run or {}).get("suite") or NOT_RECORDED
    run_id = (run or {}).get("run_id") or NOT_RECORDED
    lines = [f"# flashlab report: {suite} / {run_id}", "",
             f"Made by `python3 -m reports` from results.csv ({len(results.rows)} rows) and run.json.", ""]
    if results.notes:
        lines += [f"Note: {n}." for n in results.notes] + [""]

    lines += ["## Figures", ""]
    for o in outcomes:
        if not o.applies:
            continue
        if o.skipped:
            lines += [f"- **{o.spec.title}** (`{o.spec.name}`): skipped, {o.skipped}.", ""]
            continue
        png, svg = o.files
        lines += [f"### {o.spec.title}", "", f"![{o.spec.title}]({png})", "",
                  f"[SVG]({svg}). {o.spec.caption[0].upper()}{o.spec.caption[1:]}", ""]
        lines += [f"Note: {n}." for n in o.notes] + ([""] if o.notes else [])
        lines += o.markdown

    lines += ["## Provenance", ""] + provenance(run) + [""]
    lines += ["## Rows by status", ""] + status_counts(results) + [""]
    lines += ["### Rows not ok", ""] + not_ok(results) + [""]
    lines += ["## Fitted slopes", "",
              "Slope of log(bytes) against log(N), least squares over the ok points in the upper half of each "
              f"line's N range (log scale), never fewer than the {MIN_POINTS} largest; model lines are fitted "
              "the same way over the N where the model has a value. Each cell: slope (N fitted, points).", ""]
    lines += slopes(outcomes)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines))
