"""Numerical error: the figure `error` (error against N, with the baseline, the floor and the a-priori bounds)
and the report's tables of it: RMSE against the fp64 reference in the style of FlashAttention-3's Table 3, and
the tightness of the bounds.

All of it reads the verification columns (data.TENSORS x data.ERROR_NUMBERS / ERROR_TEXTS, data.VERIFY_COLUMNS)
and is left out of a report, without a line, when no row holds a measured error (a file older than the columns,
or a run that verified nothing).
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import style
from .data import (FAILED, SETTING_COLUMNS, TENSORS, UNVERIFIED, Results, Row, column, error_column, group_by,
                   order_key, ordered, points, verification)
from .figures import (N_LABEL, TENSOR_LABELS, Context, Drawn, dtype_legend, merged_note, describe,
                      figure, unverified_handle)
from .scaling import MAX_COLUMNS, Panel, Series, Track, draw_grid, line_handle, oom_handle
from .tables import Code, Table, code, markdown_cell, sci

# The lines of one (variant, dtype) in a panel: (metric, what it is, line style, thin grey instead of the
# variant's color); the measured one first, with the dtype's marker.
LINES = (
    ("max_abs", "max abs error", "-", False),
    ("baseline", "baseline (standard, dtype)", ":", False),
    ("floor", "floor of the rule", "-", True),
    ("bound", "deterministic bound", "--", False),
    ("bound_prob", "probabilistic bound", "-.", False),
)
FLOOR_WIDTH = 0.8
# Columns that make two rows the same problem (beside the variant and the pass).
PROBLEM_COLUMNS = ("dtype", "seqlen_q", "head_dim", *SETTING_COLUMNS, "seed")


def has_errors(results: Results) -> bool:
    """Whether some row holds a measured error (the figure and the tables are made only then)."""
    return results.any_value(error_column(t, "max_abs") for t in TENSORS)


def _flag(row: Row, name: str) -> str:
    return str(row.get(name) or "").strip()


def _label(variant: str, context: Context) -> str:
    return f"{variant} (N×N)" if context.materializes.get(variant) else variant


def _lambdas(results: Results) -> str:
    values = ordered({r.get("bound_lambda") for r in results.rows if r.get("bound_lambda") is not None},
                     "bound_lambda")
    return ", ".join(f"{v:g}" for v in values)


# --- the figure ------------------------------------------------------------------------------------------

@figure("error", "Error vs N",
        "max abs error against the fp64 reference (solid, markers) against N, one panel per output tensor (rows) "
        "and pass and head dim (columns), one color per variant, one marker per dtype; dotted: the baseline "
        "(standard attention in the dtype, err_t_baseline; none for materializing rows); thin grey: the floor of "
        "the baseline rule; dashed: the a-priori deterministic bound; dash-dot: the probabilistic bound (Higham "
        "and Mary; each the maximum over the tensor). Red x: failed (at the error where there is one, on a track "
        "at the top where the row did not run to the end); hollow grey markers on a track: rows not verified.",
        columns=(), measured=tuple(error_column(t, "max_abs") for t in TENSORS), applies=has_errors)
def error(results: Results, context: Context) -> Optional[Drawn]:
    panel_columns = ("pass", "head_dim", *context.settings)
    rows = [r for r in results.rows if r["status"] in ("ok", "oom", "error")
            and r["seqlen_q"] is not None and r["head_dim"] is not None]
    panels, measured, variants, dtypes = [], [], set(), set()
    marks = {FAILED: False, UNVERIFIED: False}
    for key, panel_rows in group_by(rows, panel_columns):
        for tensor in TENSORS:  # a panel where some row of the pass has the tensor's error (fwd: O and LSE)
            series, tracks = _panel(tensor, panel_rows, context)
            lines = [s for s in series if s.quantity.endswith(LINES[0][1])]
            if not lines:
                continue  # no measured point of this tensor here: its marks are listed under the figure
            panels.append(Panel(describe(("tensor", *panel_columns), (tensor, *key)), (tensor,), key, series,
                                tracks))
            measured += lines
            variants.update(s.line.rsplit(" ", 1)[0] for s in series)  # line: "variant dtype"
            dtypes.update(s.line.rsplit(" ", 1)[1] for s in series)
            marks[FAILED] |= any(s.quantity.endswith(FAILED) for s in series) or \
                any(t.text == FAILED for t in tracks)
            marks[UNVERIFIED] |= any(t.text == UNVERIFIED for t in tracks)
    if not panels:
        return None
    legend = [(line_handle(context.colors[v]), _label(v, context)) for v in results.distinct("variant")
              if v in variants]
    legend += dtype_legend(context, [d for d in results.distinct("dtype") if d in dtypes])
    lambdas = _lambdas(results)
    for metric, what, linestyle, grey in LINES:
        handle = line_handle(style.FLOOR_GRAY if grey else style.MODEL_GRAY, "o" if metric == "max_abs" else None,
                             linestyle)
        if grey:
            handle.set_linewidth(FLOOR_WIDTH)
        if metric == "bound_prob" and lambdas:
            what += f" (λ = {lambdas})"
        legend.append((handle, what))
    if marks[FAILED]:
        legend.append((oom_handle(), "failed"))
    if marks[UNVERIFIED]:
        legend.append((unverified_handle(), "not verified"))
    columns = min(len({p.grid_col for p in panels}), MAX_COLUMNS)
    fig, _ = draw_grid("error", context.title("Error vs N", rows), panels, ("tensor",), panel_columns, N_LABEL,
                       "absolute error vs fp64", legend, axes=style.error_axes, legend_columns=max(3, 2 * columns))
    return Drawn(fig, [], merged_note("error", measured), _marked_rows(rows))


def _panel(tensor: str, rows: Sequence[Row], context: Context) -> Tuple[List[Series], List[Track]]:
    """The lines of one panel (one tensor of one pass, head dim and setting) and its tracks of marked rows."""
    label = TENSOR_LABELS[tensor]
    value = column(error_column(tensor, "max_abs"))
    series: List[Series] = []
    failed: Dict[str, List[Tuple[str, int]]] = {}      # variant -> (marker, N) of failed rows without a value
    unverified: Dict[str, List[Tuple[str, int]]] = {}  # variant -> (marker, N)
    for (variant, dtype), line_rows in group_by(rows, ("variant", "dtype")):
        color, marker = context.colors[variant], context.markers[dtype]
        name = f"{variant} {dtype}"
        for metric, what, linestyle, grey in LINES:
            ns, ys, merged = points(line_rows, column(error_column(tensor, metric)))
            if not ns:
                continue
            first = metric == LINES[0][0]
            series.append(Series(name, f"{label} {what}", ns, ys, style.FLOOR_GRAY if grey else color,
                                 marker if first else None, linestyle, merged=merged if first else 0,
                                 print_slope=False, fitted=False, style={"linewidth": FLOOR_WIDTH} if grey else {}))
        # Failed at a value: the tensor's own verdict is 0 (or the row's, where the tensor has none).
        bad = [r for r in line_rows if r["status"] == "ok" and value(r) is not None and value(r) > 0
               and (_flag(r, error_column(tensor, "pass")) == "0"
                    or (_flag(r, "verify_pass") == "0" and not _flag(r, error_column(tensor, "pass"))))]
        if bad:
            bad.sort(key=lambda r: (r["seqlen_q"], value(r)))
            series.append(Series(name, f"{label} {FAILED}", [r["seqlen_q"] for r in bad], [value(r) for r in bad],
                                 style.OOM_COLOR, "x", "none", print_slope=False, fitted=False,
                                 style={"markersize": 7, "markeredgewidth": 1.8}))
        for r in line_rows:
            state = verification(r)
            if state == FAILED and value(r) is None and (r["status"] != "ok"
                                                         or _flag(r, error_column(tensor, "pass")) == "0"):
                failed.setdefault(variant, []).append(("x", r["seqlen_q"]))
            elif state == UNVERIFIED and r["status"] == "ok":
                unverified.setdefault(variant, []).append((marker, r["seqlen_q"]))
    tracks = [Track(FAILED, context.colors[v], style.OOM_COLOR, sorted(set(p)))
              for v, p in sorted(failed.items(), key=lambda item: order_key("variant")(item[0]))]
    tracks += [Track(UNVERIFIED, context.colors[v], style.UNVERIFIED_GRAY, sorted(set(p)), hollow=True)
               for v, p in sorted(unverified.items(), key=lambda item: order_key("variant")(item[0]))]
    return series, tracks


def _row_name(row: Row) -> str:
    return (f"{code(row['variant'])} {row['pass']} {row['dtype']} N={row['seqlen_q']} d={row['head_dim']}"
            + "".join(f" {c}={row[c]}" for c in ("causal", "distribution") if row.get(c) not in (None, "")))


def _marked_rows(rows: Sequence[Row]) -> List[Any]:
    """report.md lines under the figure: the failed rows and why, the rows not verified, the sampled ones."""
    lines: List[Any] = []
    failed = [r for r in rows if verification(r) == FAILED]
    if failed:
        lines += ["Failed (red x):", ""]
        for r in failed:
            if r["status"] != "ok":
                lines.append(f"- {_row_name(r)}: {r['status']}"
                             + (f" ({markdown_cell(r['reason'])})" if r.get("reason") else ""))
                continue
            why = []
            for t in TENSORS:
                if _flag(r, error_column(t, "pass")) != "0":
                    continue
                parts = [f"max abs {sci(r[error_column(t, 'max_abs')])}" if r.get(error_column(t, "max_abs"))
                         is not None else "no error"]
                for metric, word in (("baseline", "baseline"), ("floor", "floor"), ("bound", "bound")):
                    if r.get(error_column(t, metric)) is not None:
                        parts.append(f"{word} {sci(r[error_column(t, metric)])}")
                verdicts = [f"{word} failed" for flag, word in (("rule_pass", "rule"), ("bound_pass", "bound"))
                            if _flag(r, error_column(t, flag)) == "0"]
                why.append(f"{TENSOR_LABELS[t]} ({', '.join(parts + verdicts)})")
            lines.append(f"- {_row_name(r)}: verify_pass 0" + (": " + "; ".join(why) if why else ""))
        lines.append("")
    unverified = [r for r in rows if r["status"] == "ok" and verification(r) == UNVERIFIED]
    if unverified:
        lines += ["Not verified (hollow markers):", ""]
        lines += [f"- {_row_name(r)}: {markdown_cell(r.get('verified_heads') or '(verified_heads empty)')}"
                  for r in unverified] + [""]
    sampled: Dict[Tuple[str, str], int] = {}
    for r in rows:
        heads, query = (str(r.get(c) or "").strip() for c in ("verified_heads", "verified_rows"))
        whole = heads.startswith("all") and (not query or query.startswith("all"))  # "all (vs float64 ...)"
        if verification(r) != UNVERIFIED and r["status"] == "ok" and not whole:
            sampled[(heads, query)] = sampled.get((heads, query), 0) + 1
    if sampled:
        lines += ["Verified on a sample (the errors are those of the sample):", ""]
        lines += [f"- {n} rows: heads {markdown_cell(h or '(empty)')}, query rows {markdown_cell(q or '(empty)')}"
                  for (h, q), n in sorted(sampled.items())] + [""]
    return lines


# --- the tables ------------------------------------------------------------------------------------------

def _variant_order(materializes: Dict[str, bool]):
    """Sort key of variants: materializing ones first (the standard attention of the papers' tables), then by
    name."""
    return lambda v: (not materializes.get(v, False), order_key("variant")(v))


def _forward_rows(results: Results) -> List[Row]:
    """The ok rows with an error of O, one per (variant, problem): the fwd row, or the fwdbwd row of a problem
    without a fwd row (its forward computes the same O)."""
    problem = [c for c in PROBLEM_COLUMNS if results.has(c)]
    metrics = ("rmse", "baseline_rmse", "upcast_rmse")
    chosen: Dict[Tuple, Row] = {}
    for r in results.rows:
        if r["status"] != "ok" or r["pass"] not in ("fwd", "fwdbwd"):
            continue
        if all(r.get(error_column("o", m)) is None for m in metrics):
            continue
        key = (r["variant"], *(r.get(c) for c in problem))
        if key not in chosen or (chosen[key]["pass"] == "fwdbwd" and r["pass"] == "fwd"):
            chosen[key] = r
    return list(chosen.values())


def _problems(rows: Sequence[Row], results: Results) -> str:
    """'N = 256–2048, d = 64' and the other problem fields that vary over the rows."""
    ns = ordered({r["seqlen_q"] for r in rows}, "seqlen_q")
    parts = [f"N = {ns[0]}" if len(ns) == 1 else f"N = {ns[0]}–{ns[-1]}"]
    ds = ordered({r["head_dim"] for r in rows}, "head_dim")
    parts.append("d = " + ", ".join(str(d) for d in ds))
    for c in SETTING_COLUMNS:
        if c == "distribution" or not results.has(c):
            continue
        at: Dict[Any, set] = {}
        for r in rows:
            at.setdefault(r["seqlen_q"], set()).add(r.get(c))
        if any(len(values) > 1 for values in at.values()):  # not a field that follows N (seqlen_k = N)
            values = ordered({r.get(c) for r in rows}, c)
            parts.append(f"{c} = " + ", ".join("" if v is None else str(v) for v in values))
    return ", ".join(parts)


def rmse_tables(results: Results, context: Context) -> List[Any]:
    """One table per (dtype, distribution): the RMSE of O against fp64 of the baseline, the fp32-upcast baseline
    and each variant (columns), as FlashAttention-3's Table 3 (Shah et al. 2024, Sec. 4.3); the median over
    the problems where there are several."""
    problem = [c for c in PROBLEM_COLUMNS if results.has(c)]
    items: List[Any] = []
    order = _variant_order(context.materializes)
    for (dtype, distribution), rows in group_by(_forward_rows(results), ("dtype", "distribution")):
        header: List[Any] = [str(dtype).upper()]
        medians: List[Any] = ["RMSE"]
        counts: List[Any] = ["rows"]
        for metric, title in (("baseline_rmse", "Baseline (standard attention)"),
                              ("upcast_rmse", "Baseline, fp32 upcast")):
            per_problem: Dict[Tuple, List[float]] = {}
            for r in rows:
                if r.get(error_column("o", metric)) is not None:
                    per_problem.setdefault(tuple(r.get(c) for c in problem), []).append(r[error_column("o", metric)])
            if per_problem:  # the variants' rows of one problem carry the same baseline: one value per problem
                header.append(title)
                medians.append(statistics.median(statistics.median(v) for v in per_problem.values()))
                counts.append(len(per_problem))
        for variant in sorted({r["variant"] for r in rows}, key=order):
            values = [r[error_column("o", "rmse")] for r in rows
                      if r["variant"] == variant and r.get(error_column("o", "rmse")) is not None]
            if values:
                header.append((Code(variant), " (N×N)") if context.materializes.get(variant) else Code(variant))
                medians.append(statistics.median(values))
                counts.append(len(values))
        if len(header) == 1:
            continue
        several = len({tuple(r.get(c) for c in problem) for r in rows}) > 1
        sizes = _problems(rows, results)
        inputs = distribution or "(distribution not recorded)"
        caption = (f"RMSE of O against the fp64 reference, {dtype}, inputs {inputs}, as FlashAttention-3's "
                   "Table 3 (Shah et al. 2024, Sec. 4.3). "
                   + (f"Median over the rows ({sizes}); 'rows' counts them (problems, for the baselines). "
                      if several else f"One problem ({sizes}). ")
                   + f"Baseline: standard attention in {dtype} (err_o_baseline_rmse); fp32 upcast: standard "
                   f"attention in fp32 on the same inputs, output rounded to {dtype} (err_o_upcast_rmse). "
                   "Forward rows, or the forward of a forward + backward row where the problem has no forward "
                   "row; rows that failed verification count too.")
        name = f"rmse_{dtype}_{distribution or 'unknown'}"
        items += [caption, "", Table(name, header, [medians, counts], "l" + "r" * (len(header) - 1), caption), ""]
    return items


def tightness_table(results: Results, context: Context) -> List[Any]:
    """Per (variant, dtype, tensor): median and worst (smallest) tightness of the deterministic and of the
    probabilistic bound, the largest fraction of elements above the probabilistic bound, the number of rows
    and of rows whose error exceeds the deterministic bound (bound_pass 0), and the data path."""
    entries = []
    for r in results.rows:
        if r["status"] != "ok":
            continue
        for t in TENSORS:
            if any(r.get(error_column(t, m)) is not None for m in ("tightness", "tightness_prob")) or \
                    _flag(r, error_column(t, "bound_pass")):
                entries.append(dict(r, tensor=t))
    if not entries:
        return []
    order = _variant_order(context.materializes)
    groups = sorted(group_by(entries, ("variant", "dtype", "tensor")),
                    key=lambda g: (order(g[0][0]), order_key("dtype")(g[0][1]), order_key("tensor")(g[0][2])))
    rows = []
    for (variant, dtype, tensor), group in groups:
        cells: List[Any] = [Code(variant), dtype, TENSOR_LABELS[tensor]]
        for metric in ("tightness", "tightness_prob"):
            # a tensor computed exactly (max abs error 0) has no tightness: older runs wrote 0 there
            values = [r[error_column(tensor, metric)] for r in group if r.get(error_column(tensor, metric)) is not None
                      and r.get(error_column(tensor, "max_abs")) not in (None, 0, 0.0)]
            cells += [statistics.median(values), min(values)] if values else [None, None]
        exceed = [r[error_column(tensor, "prob_exceed")] for r in group
                  if r.get(error_column(tensor, "prob_exceed")) is not None]
        cells.append(max(exceed) if exceed else None)
        cells.append(len(group))
        cells.append(sum(1 for r in group if _flag(r, error_column(tensor, "bound_pass")) == "0"))
        paths = ordered({str(r.get("data_path") or "").strip() for r in group} - {""}, "data_path")
        cells.append("; ".join(paths))
        rows.append(cells)
    lambdas = _lambdas(results)
    caption = ("Tightness of the a-priori error bounds: bound / measured max abs error of each ok row "
               "(err_t_tightness; rows whose tensor is exact, error 0, have none), median and worst (smallest) over the rows of each variant, dtype and output "
               "tensor; prob.: the same for the probabilistic bound of Higham and Mary"
               + (f" at λ = {lambdas}" if lambdas else "") + " (err_t_tightness_prob). Below 1 the error is "
               "above the bound: bound_pass 0 counts the rows above the deterministic bound (a bug in the kernel "
               "or in the bound); exceed is the largest fraction of a tensor's elements above their "
               "probabilistic bound (err_t_prob_exceed).")
    header = ["variant", "dtype", "tensor", "median", "worst", "median (prob.)", "worst (prob.)", "exceed (prob.)",
              "rows", "bound_pass = 0", "data path"]
    return [caption, "", Table("bound_tightness", header, rows, "lll" + "r" * 7 + "l", caption), ""]


def error_tables(results: Results, context: Context) -> List[Any]:
    """The report's section of error tables (report.md items); empty when no row holds a measured error."""
    if not has_errors(results):
        return []
    items: List[Any] = []
    rmse = rmse_tables(results, context)
    if rmse:
        items += ["### RMSE vs fp64", ""] + rmse
    tightness = tightness_table(results, context)
    if tightness:
        items += ["### Bound tightness", ""] + tightness
    return items
