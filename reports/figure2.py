"""Figure 2 of the FlashAttention paper (Dao et al. 2022) from a run of experiments/fa_figure2.toml.

Left, as the paper's table: standard attention against the flash variants, forward + backward, on one problem
(GPT-2 medium: N = 1024, d = 64, H = 16, batch 64): GFLOPs, DRAM and L2 traffic, runtime. Right: the forward of a
flash variant against its block size br (query rows per CTA), given as run options `id[br=...,bc=...]`: DRAM and
L2 traffic (GB, left axis) and runtime (ms, right axis).

The block-size rows fix the problem: the figure applies to a file holding forward rows of a variant with a `br`
option, and the left panel takes the forward + backward rows of the same problem. Only ok rows are drawn; the
others are listed under the figure in report.md, with every drawn number.
"""

from __future__ import annotations

import re
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from . import style
from .data import (NUMBER_COLUMNS, SETTING_COLUMNS, Results, Row, column, column_sum, group_by, order_key,
                   split_variant)
from .figures import PASS_LABELS, TRAFFIC_QUANTITIES, Context, Drawn, figure
from .tables import Code, Table, code, markdown_cell
from .scaling import line_handle

GIGA = 1e9
BLOCK_OPTIONS = ("br", "bc")
# Columns that make two rows the same problem (beside the variant and the pass).
PROBLEM_COLUMNS = ("dtype", "seqlen_q", "head_dim", *SETTING_COLUMNS)
RUNTIME_COLOR = "#9467bd"
TRAFFIC_MARKERS = {"DRAM read+write": "o", "L2 requests read+write": "s"}
DEFAULT = "(default)"

DRAM = column_sum("dram_read_bytes", "dram_write_bytes")
L2 = column_sum("l2_read_bytes", "l2_write_bytes")


def block_sizes(variant: str) -> Optional[Tuple[int, Optional[int]]]:
    """(br, bc) of a variant name with block-size run options: 'flash2[br=128,bc=64]' -> (128, 64), in either
    order and with spaces; 'flash2[br=64]' -> (64, None), bc being the variant's default. None when there is
    no br, a size is not a positive integer, or another option is set (the row then varies more than the tile)."""
    _, options = split_variant(variant)
    if "br" not in options or set(options) - set(BLOCK_OPTIONS):
        return None
    sizes: List[Optional[int]] = []
    for name in BLOCK_OPTIONS:
        text = options.get(name)
        if text is not None and not re.fullmatch(r"0*[1-9][0-9]*", text):
            return None
        sizes.append(None if text is None else int(text))
    return sizes[0], sizes[1]


def _block_rows(results: Results) -> List[Row]:
    """The forward rows of block-size variants, each with its parsed br and bc and its registry id."""
    rows = []
    for row in results.rows:
        sizes = block_sizes(row["variant"])
        if row["pass"] == "fwd" and sizes is not None:
            rows.append(dict(row, br=sizes[0], bc=sizes[1], variant_id=split_variant(row["variant"])[0]))
    return rows


def applies(results: Results) -> bool:
    return bool(_block_rows(results))


# --- numbers ---------------------------------------------------------------------------------------------

def number(value: Optional[float]) -> str:
    """Three significant digits from 0.1 to 1000 (whole numbers above), three decimals below; '–' when not
    measured."""
    if value is None:
        return "–"
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if abs(value) >= limit:
            return f"{value:.{digits}f}"
    return f"{value:.3f}"


def _giga(value: Callable[[Row], Optional[float]]) -> Callable[[Row], Optional[float]]:
    """value / 1e9: bytes in GB, flops in GFLOPs."""
    return lambda row: None if value(row) is None else value(row) / GIGA


MEDIAN, P20, P80 = column("time_median_ms"), column("time_p20_ms"), column("time_p80_ms")

# The quantities of the report's tables: (label, value of a row); the left panel shows those in TABLE_ROWS
# and the p20-p80 range of the runtime.
QUANTITIES = (
    ("GFLOPs", _giga(column("flops"))),
    ("DRAM R+W (GB)", _giga(DRAM)),
    ("L2 R+W (GB)", _giga(L2)),
    ("model: minimum (GB)", _giga(column("bytes_model_min"))),
    ("model: variant (GB)", _giga(column("bytes_model_variant"))),
    ("runtime median (ms)", MEDIAN),
    ("p20 (ms)", P20),
    ("p80 (ms)", P80),
)
TABLE_ROWS = ("GFLOPs", "DRAM R+W (GB)", "L2 R+W (GB)", "model: variant (GB)", "runtime median (ms)")


def _merged(rows: Sequence[Row]) -> Tuple[Row, int]:
    """One row for the rows of one point (runs concatenated): the median of each number; and how many merged."""
    if len(rows) == 1:
        return rows[0], 0
    merged = dict(rows[-1])
    for name in NUMBER_COLUMNS:
        values = [r[name] for r in rows if r.get(name) is not None]
        merged[name] = statistics.median(values) if values else None
    return merged, len(rows) - 1


def _setting(columns: Sequence[str], values: Sequence[Any]) -> str:
    """'bf16, B=64, H=16, N=1024, d=64, non-causal' from a problem key."""
    v = dict(zip(columns, values))
    parts = [str(v["dtype"])]
    for name, label in (("batch", "B"), ("heads", "H"), ("heads_kv", "H_kv"), ("seqlen_q", "N"),
                        ("seqlen_k", "N_k"), ("head_dim", "d")):
        same = (name == "heads_kv" and v.get(name) == v.get("heads")) or \
               (name == "seqlen_k" and v.get(name) == v.get("seqlen_q"))
        if v.get(name) is not None and not same:
            parts.append(f"{label}={v[name]}")
    if v.get("causal") not in (None, ""):
        parts.append("causal" if str(v["causal"]).lower() in ("1", "true") else "non-causal")
    return ", ".join(parts)


# --- the figure ------------------------------------------------------------------------------------------

@figure("figure2", "FlashAttention Figure 2: standard vs flash, and the block size",
        "the FlashAttention paper's Figure 2 (Dao et al. 2022; suite experiments/fa_figure2.toml). Left: standard "
        "attention against the flash variants, forward + backward, on the problem of the block-size rows: GFLOPs "
        "(the flops model), DRAM and L2 request read+write (GB), runtime (median, p20–p80). Right: the forward "
        "against the query block br (log2 axis) at the most common K/V tile bc: DRAM and L2 request read+write "
        "and the bytes models (GB, left axis), runtime (ms, right axis, p20–p80 bars); other bc as open markers.",
        columns=("time_median_ms", "time_p20_ms", "time_p80_ms", "flops", "dram_read_bytes", "dram_write_bytes",
                 "l2_read_bytes", "l2_write_bytes", "bytes_model_min", "bytes_model_variant"),
        measured=("time_median_ms",), applies=applies)
def figure2(results: Results, context: Context) -> Optional[Drawn]:
    problem = [c for c in PROBLEM_COLUMNS if results.has(c)]
    # The sweep drawn: the (variant id, problem) with the most ok rows, then the most rows, then the first.
    sweeps = group_by(_block_rows(results), ("variant_id", *problem))
    if not sweeps:
        return None
    (variant_id, *key), sweep = max(sweeps, key=lambda g: (sum(r["status"] == "ok" for r in g[1]), len(g[1])))
    versus = [r for r in results.rows if r["pass"] in ("fwd", "fwdbwd") and block_sizes(r["variant"]) is None
              and all(r.get(c) == v for c, v in zip(problem, key))]

    def order(variant: str) -> Tuple:  # materializing variants first, as the paper's "Standard" column
        return (not context.materializes.get(variant, False), order_key("variant")(variant))

    blocks, merged = _ok_points(sweep, ("br", "bc"))
    compared, extra = _ok_points(versus, ("pass", "variant"))
    compared = {k: compared[k] for k in sorted(compared, key=lambda k: (order_key("pass")(k[0]), order(k[1])))}
    if not blocks and not compared:
        return None
    bcs = [bc for _, bc in blocks]
    main_bc = min(set(bcs), key=lambda bc: (-bcs.count(bc), order_key("bc")(bc))) if bcs else None
    setting = _setting(problem, key)

    fig = style.new_figure(2, 1)
    fig.suptitle(context.title(f"FlashAttention Figure 2: {setting}", []))  # the setting names B and H
    grid = fig.add_gridspec(2, 2, height_ratios=[style.PANEL_SIZE[1], 0.5])
    variants = sorted({r["variant"] for r in versus if r["pass"] == "fwdbwd"}, key=order)
    _draw_table(fig.add_subplot(grid[0, 0]), variants, versus, compared, context)
    legend = _draw_blocks(fig.add_subplot(grid[0, 1]), variant_id, blocks, main_bc)
    legend_ax = fig.add_subplot(grid[1, :])
    legend_ax.axis("off")
    legend_ax.legend([h for h, _ in legend], [label for _, label in legend], loc="center", ncol=3, frameon=False,
                     handlelength=2.6)

    missing = sorted((r for r in sweep + versus if r["status"] != "ok"),
                     key=lambda r: (order_key("pass")(r["pass"]), order(r["variant"])))
    notes = [f"figure2: block-size rows of {len(sweeps) - 1} other (variant, problem) not drawn"] \
        if len(sweeps) > 1 else []
    if merged + extra:
        notes.append(f"figure2: {merged + extra} rows measured again at the same point were merged (median)")
    return Drawn(fig, [], notes, _markdown(setting, variant_id, main_bc, blocks, compared, missing))


def _ok_points(rows: Sequence[Row], columns: Sequence[str]) -> Tuple[Dict[Tuple, Row], int]:
    """The ok rows by their values of `columns`, in canonical order, one row each (rows measured again at the
    same point merged); and how many rows were merged."""
    out: Dict[Tuple, Row] = {}
    merged = 0
    for values, group in group_by([r for r in rows if r["status"] == "ok"], columns):
        out[values], extra = _merged(group)
        merged += extra
    return out, merged


def _draw_table(ax, variants: Sequence[str], versus: Sequence[Row], compared: Dict[Tuple, Row],
                context: Context) -> None:
    """The paper's table: a column per variant (forward + backward), a row per quantity."""
    ax.axis("off")
    ax.set_title(PASS_LABELS["fwdbwd"])
    if not variants:
        ax.text(0.5, 0.5, "no forward + backward rows of this problem", ha="center", va="center",
                transform=ax.transAxes)
        return
    header = [""]
    for v in variants:
        status = {r["status"] for r in versus if r["variant"] == v and r["pass"] == "fwdbwd"}
        label = f"{v} (N×N)" if context.materializes.get(v) else v
        header.append(label if ("fwdbwd", v) in compared else f"{label}\n({', '.join(sorted(status))})")
    measured = [compared.get(("fwdbwd", v)) for v in variants]
    rows = [[label] + [number(value(row)) if row else "–" for row in measured]
            for label, value in QUANTITIES if label in TABLE_ROWS]
    rows.append(["runtime p20–p80 (ms)"] + [f"{number(P20(row))}–{number(P80(row))}" if row else "–"
                                            for row in measured])
    width = 0.56 / len(variants)
    cells = ax.table(cellText=rows, colLabels=header, colWidths=[0.44] + [width] * len(variants), loc="center",
                     cellLoc="right", colLoc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(8)
    cells.scale(1.0, 1.6)
    two_line_header = any("\n" in h for h in header)
    for (r, c), item in cells.get_celld().items():
        item.set_edgecolor("#bbbbbb")
        if c == 0:
            item.set_text_props(ha="left")
        if r == 0:
            item.set_text_props(fontweight="bold")
            if two_line_header:
                item.set_height(item.get_height() * 1.6)


def _draw_blocks(ax, variant_id: str, blocks: Dict[Tuple, Row], main_bc: Optional[int]) -> List[Tuple[Any, str]]:
    """Traffic (left axis) and runtime (right axis) against br; returns the legend entries."""
    main = [(br, row) for (br, bc), row in blocks.items() if bc == main_bc]
    others = [(br, row) for (br, bc), row in blocks.items() if bc != main_bc]
    ax.set_xlabel("query rows per block br (log2)")
    ax.set_ylabel("GB per forward pass")
    if not blocks:
        ax.set_title(f"forward, {variant_id} against br")
        ax.text(0.5, 0.5, "no ok forward row of a block size", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return []
    ax.set_title(f"forward, {variant_id} against br (bc={DEFAULT if main_bc is None else main_bc})")
    ax.set_xscale("log", base=2)
    brs = sorted({br for br, _ in blocks})
    ax.set_xlim(brs[0] / 2 ** 0.5, brs[-1] * 2 ** 0.5)
    ax.xaxis.set_major_locator(FixedLocator(brs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    runtime = ax.twinx()
    runtime.grid(False)
    runtime.set_ylabel("runtime (ms)", color=RUNTIME_COLOR)
    legend: List[Tuple[Any, str]] = []
    top = [0.0, 0.0]
    for quantity, value, color, measured in TRAFFIC_QUANTITIES:
        marker = TRAFFIC_MARKERS.get(quantity)
        xs, ys = _xy(main, _giga(value))
        if xs:
            ax.plot(xs, ys, color=color, marker=marker, linestyle="-" if measured else "--",
                    linewidth=None if measured else 1.0)
            legend.append((line_handle(color, marker, "-" if measured else "--"), quantity))
        xs_other, ys_other = _xy(others, _giga(value))
        if measured and xs_other:
            ax.plot(xs_other, ys_other, color=color, marker=marker, markerfacecolor="white", linestyle="none")
        top[0] = max([top[0], *ys, *(ys_other if measured else [])])
    for rows, filled in ((main, True), (others, False)):
        timed = [(x, row) for x, row in rows if MEDIAN(row) is not None]
        if not timed:
            continue
        xs, ys = [x for x, _ in timed], [MEDIAN(row) for _, row in timed]
        lo = [y - P20(row) if P20(row) is not None else 0.0 for (_, row), y in zip(timed, ys)]
        hi = [P80(row) - y if P80(row) is not None else 0.0 for (_, row), y in zip(timed, ys)]
        runtime.errorbar(xs, ys, yerr=[lo, hi], color=RUNTIME_COLOR, marker="D", capsize=2.5,
                         linestyle="-" if filled else "none", markerfacecolor=RUNTIME_COLOR if filled else "white")
        top[1] = max([top[1], *(y + h for y, h in zip(ys, hi))])
        if filled:
            legend.append((line_handle(RUNTIME_COLOR, "D"), "runtime (median, p20–p80)"))
    if others:
        other_bcs = sorted({bc for (_, bc) in blocks if bc != main_bc}, key=order_key("bc"))
        legend.append((Line2D([], [], color=style.MODEL_GRAY, marker="o", markerfacecolor="white", linestyle="none"),
                       "open: bc=" + ", ".join(DEFAULT if bc is None else str(bc) for bc in other_bcs)))
    ax.set_ylim(0, top[0] * 1.12 or 1.0)
    runtime.set_ylim(0, top[1] * 1.12 or 1.0)
    return legend


def _xy(rows: Sequence[Tuple[int, Row]], value: Callable[[Row], Optional[float]]) -> Tuple[List[int], List[float]]:
    """(br, value) of the rows that have a value."""
    kept = [(x, value(row)) for x, row in rows if value(row) is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def _markdown(setting: str, variant_id: str, main_bc: Optional[int], blocks: Dict[Tuple, Row],
              compared: Dict[Tuple, Row], missing: Sequence[Row]) -> List[Any]:
    """report.md items under the figure: its numbers (tables), the rows not drawn, and what the block size does."""
    bc_label = DEFAULT if main_bc is None else str(main_bc)
    labels = [label for label, _ in QUANTITIES]
    lines: List[Any] = [f"Problem: {setting}. Standard against the flash variants (the left panel: forward + "
                        "backward):", ""]
    rows = [[Code(v), p] + [number(value(row)) for _, value in QUANTITIES] for (p, v), row in compared.items()]
    lines += [Table("figure2_variants", ["variant", "pass"] + labels, rows, "ll" + "r" * len(labels),
                    f"Standard attention against the flash variants on {setting} (FlashAttention Figure 2, left)."),
              ""]
    rows = [[str(br), DEFAULT if bc is None else str(bc), Code(row["variant"])]
            + [number(value(row)) for _, value in QUANTITIES[1:]] for (br, bc), row in blocks.items()]
    rows += [[DEFAULT, DEFAULT, Code(v)] + [number(value(row)) for _, value in QUANTITIES[1:]]
             for (p, v), row in compared.items() if v == variant_id and p == "fwd"]
    lines += [f"Forward of `{variant_id}` against the block size (the right panel draws bc = {bc_label} as lines):",
              ""]
    lines += [Table("figure2_blocks", ["br", "bc", "variant"] + labels[1:], rows, "rrl" + "r" * (len(labels) - 1),
                    f"The forward of {variant_id} against the block size br on {setting} (FlashAttention Figure 2, "
                    "right)."), ""]
    if missing:
        lines += ["Not drawn (not ok):", ""]
        lines += [f"- {code(r['variant'])} {r['pass']}: {r['status']}"
                  + (f" ({markdown_cell(r['reason'])})" if r.get("reason") else "") for r in missing] + [""]
    lines += ["In FlashAttention-2's forward each CTA keeps br query rows on chip and streams every K/V tile of "
              "its head, so K and V are re-read once per query block: the modelled K/V traffic falls as 1/br, "
              "while DRAM traffic need not fall if L2 (tens of MB) holds the K and V of a head.", ""]
    return lines
