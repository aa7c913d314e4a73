"""report.md: the figures, the run's provenance, row counts by status, and the fitted slopes.

The text depends only on the input files (no clock, no paths), so the same run gives the same page. Every table
is a tables.Table, written both into report.md and as tables/NAME.tex beside it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from .data import STATUSES, Results, order_key, ordered, run_stamp
from .fit import MIN_POINTS
from .style import format_bytes, format_n
from .tables import TABLES_DIR, Code, Strong, Table, Tables, markdown_cell

if TYPE_CHECKING:  # figures imports the figure modules, which use the tables below
    from .figures import Outcome

RUN_KEYS = ("suite", "run_id", "suite_file", "suite_hash", "seed", "flops_convention", "git_commit", "started",
            "finished")
DEVICE_KEYS = ("name", "sm_count", "l2_bytes", "memory_bytes", "compute_capability", "driver_version",
               "runtime_version", "clocks_before", "clocks_after")
NOT_RECORDED = "(not recorded)"


Item = Union[str, Table]  # a line of report.md, or a table (rendered to Markdown and LaTeX)


def _value(mapping: Dict[str, Any], key: str) -> Any:
    """A provenance value as a cell: in code type, bytes also in binary units."""
    if key not in mapping or mapping[key] is None or mapping[key] == "":
        return NOT_RECORDED
    value = mapping[key]
    text = Code(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    if key in ("l2_bytes", "memory_bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return (text, f" ({format_bytes(value)})")
    return text


def provenance(run: Optional[Dict[str, Any]]) -> List[Item]:
    if run is None:
        return ["run.json not found: the run's provenance is unknown."]
    lines: List[Item] = [f"- **{key}**: {markdown_cell(_value(run, key))}" for key in RUN_KEYS]
    extra = sorted(k for k in run if k not in RUN_KEYS and k not in ("command", "device"))
    lines += [f"- **{key}**: {markdown_cell(_value(run, key))}" for key in extra]
    lines += ["", "Command:", "", "```", str(run.get("command", NOT_RECORDED)).replace("```", "'''"), "```", ""]
    device = run.get("device")
    if isinstance(device, dict):
        rows = [[key, _value(device, key)] for key in DEVICE_KEYS]
        rows += [[key, _value(device, key)] for key in sorted(device) if key not in DEVICE_KEYS]
        lines += ["Device:", "", Table("device", ["field", "value"], rows, caption="The device of the run (run.json).")]
    elif "device" in run and device is None:
        lines.append("Device: none (a CPU-only run).")
    else:
        lines.append(f"Device: {NOT_RECORDED}.")
    return lines


def status_counts(results: Results) -> Table:
    statuses = list(STATUSES) + ordered({r["status"] for r in results.rows} - set(STATUSES), "status")
    variants = results.distinct("variant")
    rows: List[List[Any]] = []
    for v in variants:
        counts = [sum(1 for r in results.rows if r["variant"] == v and r["status"] == s) for s in statuses]
        rows.append([v] + counts + [sum(counts)])
    totals = [sum(1 for r in results.rows if r["status"] == s) for s in statuses]
    rows.append([Strong("all")] + [Strong(n) for n in totals] + [Strong(len(results.rows))])
    return Table("rows_by_status", ["variant"] + statuses + ["rows"], rows, "l" + "r" * (len(statuses) + 1),
                 "Rows of results.csv by variant and status.")


def _n_list(ns: Sequence[int]) -> str:
    known = sorted({n for n in ns if n is not None})
    return ", ".join([format_n(n) or str(n) for n in known] + (["?"] if None in ns else []))


def not_ok(results: Results) -> Item:
    """Rows that are not ok, grouped by (status, variant, pass, dtype, head_dim, reason), with their N."""
    columns = ("status", "variant", "pass", "dtype", "head_dim")
    groups: Dict[tuple, List[int]] = {}
    for r in results.rows:
        if r["status"] != "ok":
            key = tuple(r.get(c) for c in columns) + (r.get("reason", "") or "",)
            groups.setdefault(key, []).append(r["seqlen_q"])
    if not groups:
        return "Every row is ok."
    keys = [order_key(c) for c in columns] + [order_key("reason")]
    rows = [["" if v is None else str(v) for v in key[:-1]] + [_n_list(groups[key]), key[-1]]
            for key in sorted(groups, key=lambda k: tuple(f(v) for f, v in zip(keys, k)))]
    return Table("rows_not_ok", ["status", "variant", "pass", "dtype", "d", "N", "reason"], rows,
                 caption="Rows that are not ok, by status, variant, pass, dtype, head dim and reason, with their N.")


def slopes(outcomes: Sequence[Outcome]) -> List[Item]:
    """One table per figure: a row per (panel, line), a column per quantity; each cell 'slope (N range)'."""
    lines: List[Item] = []
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
        rows = [[panel, line] + [by.get(q, "") for q in quantities] for (panel, line), by in cells.items()]
        lines += [f"`{o.spec.name}`:", ""]
        lines.append(Table(f"slopes_{o.spec.name}", ["panel", "line"] + quantities, rows,
                           "ll" + "r" * len(quantities),
                           f"Fitted slopes of the figure {o.spec.name}: slope of log(bytes) against log(N) "
                           "(N range fitted, points)."))
        lines.append("")
    return lines or [f"No line has the {MIN_POINTS} points a slope needs.", ""]


def write(path: str, results: Results, run: Optional[Dict[str, Any]], outcomes: Sequence[Outcome],
          sections: Sequence[Tuple[str, Sequence[Item]]] = ()) -> None:
    """Writes report.md at `path` and its tables as tables/NAME.tex beside it. `sections` are (heading, items)
    put after the figures (items empty: the section is left out)."""
    suite = (run or {}).get("suite") or NOT_RECORDED
    run_id = (run or {}).get("run_id") or NOT_RECORDED
    lines: List[Item] = [f"# flashlab report: {suite} / {run_id}", "",
                         f"Made by `python3 -m reports` from results.csv ({len(results.rows)} rows) and run.json.",
                         "", f"Each table is also a LaTeX table (booktabs) in `{TABLES_DIR}/`, linked under it.", ""]
    if results.notes:
        lines += [f"Note: {n}." for n in results.notes] + [""]

    lines += ["## Figures", ""]
    stamp = run_stamp(run)  # device and commit, also each figure's footer
    for o in outcomes:
        if not o.applies:
            continue
        if o.skipped:
            lines += [f"- **{o.spec.title}** (`{o.spec.name}`): skipped, {o.skipped}.", ""]
            continue
        png, svg = o.files
        lines += [f"### {o.spec.title}", "", f"![{o.spec.title}]({png})", "",
                  f"[SVG]({svg}). {o.spec.caption[0].upper()}{o.spec.caption[1:]} Run: {stamp}.", ""]
        lines += [f"Note: {n}." for n in o.notes] + ([""] if o.notes else [])
        lines += o.markdown

    for heading, items in sections:
        if items:
            lines += [f"## {heading}", ""] + list(items) + [""]
    lines += ["## Provenance", ""] + provenance(run) + [""]
    lines += ["## Rows by status", "", status_counts(results), ""]
    lines += ["### Rows not ok", "", not_ok(results), ""]
    lines += ["## Fitted slopes", "",
              "Slope of log(bytes) against log(N), least squares over the ok points in the upper half of each "
              f"line's N range (log scale), never fewer than the {MIN_POINTS} largest; model lines are fitted "
              "the same way over the N where the model has a value. Each cell: slope (N fitted, points).", ""]
    lines += slopes(outcomes)
    tables = Tables()
    text: List[str] = []
    for item in lines:
        text += tables.render(item) if isinstance(item, Table) else [item]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(text))
    tables.save(os.path.dirname(os.path.abspath(path)))
