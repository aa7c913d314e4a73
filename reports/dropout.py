"""The cost of dropout: each variant's time at dropout p > 0 over its time at p = 0 on the same problem, flashlab's
variants and the peers of peers.csv (PyTorch SDPA backends, experiments/peers/torch_sdpa.py) side by side.

A row with p > 0 is paired with its twin: the row whose key is its key without `|dropout=P|dropout_seed=S` (the
harness names the dropout in a row's key only where p > 0; a peer's key is flashlab's with the variant replaced), so
a twin is the same variant, pass, dtype, inputs, shape and mask at p = 0, as experiments/dropout.toml runs them.
The cost is the ratio of the median times, time(p) / time(0): 1.25 means dropout adds 25%.

Written by the report (cli.py): the section "Cost of dropout" of report.md, one table per (dtype, p) with a row per
problem (pass, head dim, causal, N and the problem fields that vary) and a column per variant, and the median of each
column at the bottom; a cell holds the ratio, or the status of the row that is not ok (a backend without dropout is
`unsupported`), or '–' where the run has no twin. Also dropout_cost.csv beside report.md: one line per row with p > 0,
both rows' statuses and times (median, p20, p80) and the ratio. Both are left out (and an older dropout_cost.csv
removed) for a run without a row at p > 0.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .data import Results, Row, order_key, tuple_key
from .tables import Code, Strong, Table

CSV_FILE = "dropout_cost.csv"
# The key's dropout segments, present only where p > 0 (harness/src/suite.cpp RowSpec::key).
_KEY_DROPOUT = re.compile(r"\|dropout(?:_seed)?=[^|]*")
# Problem fields beside (pass, head_dim, causal, seqlen_q) that label a table's rows where they vary.
LABEL_COLUMNS = ("seqlen_k", "heads", "heads_kv", "head_dim_v", "batch", "window_left", "window_right",
                 "distribution", "softmax_scale", "varlen")
TIMES = ("time_median_ms", "time_p20_ms", "time_p80_ms")
CSV_COLUMNS = ("variant", "pass", "dtype", "distribution", "batch", "heads", "heads_kv", "seqlen_q", "seqlen_k",
               "head_dim", "head_dim_v", "causal", "dropout", "status") + TIMES + \
    ("status_p0",) + tuple(f"{t}_p0" for t in TIMES) + ("ratio", "key")


def dropout_of(row: Row) -> float:
    """The row's dropout probability: its `dropout` column, or (a peer row written without it) its key's
    `dropout=P`; 0 where neither says."""
    if isinstance(row.get("dropout"), (int, float)):
        return float(row["dropout"])
    match = re.search(r"\|dropout=([^|]*)", str(row.get("key") or ""))
    try:
        return float(match.group(1)) if match else 0.0
    except ValueError:
        return 0.0


def twin_key(key: str) -> str:
    """The key of the same problem at p = 0."""
    return _KEY_DROPOUT.sub("", key)


@dataclass(frozen=True)
class Cost:
    """A row at p > 0 and its twin at p = 0 (None where the run has none)."""

    row: Row
    twin: Optional[Row]

    @property
    def p(self) -> float:
        return dropout_of(self.row)

    @property
    def ratio(self) -> Optional[float]:
        """time(p) / time(0) of the median times; None unless both rows are ok with a positive time."""
        if self.twin is None:
            return None
        times = [r.get("time_median_ms") if r.get("status") == "ok" else None for r in (self.row, self.twin)]
        if any(t is None or t <= 0 for t in times):
            return None
        return times[0] / times[1]


def costs(results: Results) -> List[Cost]:
    """Every row at p > 0 with its twin, in file order; empty for a file without keys or without dropout."""
    if not results.has("key"):
        return []
    by_key = {row["key"]: row for row in results.rows if row.get("key")}
    return [Cost(row, by_key.get(twin_key(row["key"]))) for row in results.rows
            if row.get("key") and dropout_of(row) > 0]


def _labels(found: Sequence[Cost]) -> List[str]:
    """The LABEL_COLUMNS that vary among rows sharing (pass, head_dim, causal, seqlen_q)."""
    chosen: List[str] = []
    for candidate in LABEL_COLUMNS:
        seen: Dict[Tuple, set] = {}
        for c in found:
            key = tuple(c.row.get(k) for k in ("pass", "head_dim", "causal", "seqlen_q", *chosen))
            seen.setdefault(key, set()).add(c.row.get(candidate))
        if any(len(values) > 1 for values in seen.values()):
            chosen.append(candidate)
    return chosen


def _ratio_cell(value: float) -> str:
    return f"{value:.2f}"


def _cell(cost: Optional[Cost]) -> Any:
    if cost is None or cost.twin is None:
        return None
    ratio = cost.ratio
    if ratio is not None:
        return _ratio_cell(ratio)
    for row, when in ((cost.row, ""), (cost.twin, " at p = 0")):
        if row.get("status") != "ok":
            return f"{row.get('status') or '?'}{when}"
    return None  # ok rows without a time


def tables(found: Sequence[Cost]) -> List[Any]:
    """The report.md items of the section: one table per (dtype, p), a row per problem, a column per variant."""
    if not found:
        return []
    items: List[Any] = [
        "Time at dropout p over time at p = 0 of the same problem (its twin: the same variant, pass, dtype, inputs, "
        "shape and mask), from the median times: 1.25 means dropout adds 25%. flashlab's variants and the peers "
        "(peers.csv) side by side. A cell shows the status of a row that is not ok (a backend without dropout is "
        "`unsupported`), '–' where the run has no twin. Peer rows with dropout are not verified (PyTorch draws its "
        f"own mask). Every pair with both times: [{CSV_FILE}]({CSV_FILE}).", ""]
    groups: Dict[Tuple[Any, float], List[Cost]] = {}
    for c in found:
        groups.setdefault((c.row.get("dtype"), c.p), []).append(c)
    for dtype, p in sorted(groups, key=lambda g: (order_key("dtype")(g[0]), g[1])):
        group = groups[(dtype, p)]
        labels = _labels(group)
        problem = ("pass", "head_dim", "causal", "seqlen_q", *labels)
        variants = sorted({c.row["variant"] for c in group}, key=order_key("variant"))
        cells: Dict[Tuple, Dict[str, Cost]] = {}
        for c in group:
            cells.setdefault(tuple(c.row.get(k) for k in problem), {})[c.row["variant"]] = c
        rows: List[List[Any]] = []
        for key in sorted(cells, key=tuple_key(problem)):
            rows.append(["" if v is None else str(v) for v in key] + [_cell(cells[key].get(v)) for v in variants])
        medians: List[Any] = [Strong("median")] + [""] * (len(problem) - 1)
        for v in variants:
            ratios = [c.ratio for c in group if c.row["variant"] == v and c.ratio is not None]
            medians.append(Strong(_ratio_cell(statistics.median(ratios))) if ratios else None)
        rows.append(medians)
        missing = sum(1 for c in group if c.twin is None)
        caption = (f"Cost of dropout p = {p:g}, {dtype}: time at p = {p:g} / time at p = 0, per problem and variant "
                   "(median times); median: over the rows with a ratio."
                   + (f" {missing} row{'s' if missing > 1 else ''} at p = {p:g} "
                      f"{'have' if missing > 1 else 'has'} no twin at p = 0." if missing else ""))
        header = ["pass", "d", "causal", "N", *labels] + [Code(v) for v in variants]
        items += [caption, "", Table(f"dropout_cost_{dtype}_p{p:g}", header, rows,
                                     "l" * len(problem) + "r" * len(variants), caption), ""]
    return items


def _csv_value(value: Any) -> Any:
    return "" if value is None else value


def write_csv(out_dir: str, found: Sequence[Cost]) -> None:
    """dropout_cost.csv in out_dir: a line per row at p > 0 (in file order) with both rows' statuses and times and the
    ratio; removed where there is none (a run without dropout)."""
    path = os.path.join(out_dir, CSV_FILE)
    if not found:
        if os.path.isfile(path):
            os.remove(path)
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for c in found:
            twin = c.twin or {}
            line = [c.row.get(k) for k in CSV_COLUMNS[:CSV_COLUMNS.index("status") + 1]]
            line[CSV_COLUMNS.index("dropout")] = c.p
            line += [c.row.get(t) for t in TIMES] + [twin.get("status")] + [twin.get(t) for t in TIMES]
            line += [c.ratio, c.row.get("key")]
            writer.writerow([_csv_value(v) for v in line])
