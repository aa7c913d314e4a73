"""Reading a run's files (results.csv, run.json) and the ordering and grouping every figure shares.

Columns are read by name (harness/src/columns.cpp lists them); an empty field means "not measured" and is
read as None. Only the identity columns in REQUIRED_COLUMNS are required: a figure whose own columns are
absent is skipped with a note instead (see figures.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

RESULTS_FILE = "results.csv"
RUN_FILE = "run.json"

# Without these a row cannot be placed in any figure or table.
REQUIRED_COLUMNS = ("variant", "pass", "dtype", "seqlen_q", "head_dim", "status")

# Columns read as integers / as numbers (bytes, times); an empty field is None, anything else must parse.
INT_COLUMNS = ("batch", "heads", "heads_kv", "seqlen_q", "seqlen_k", "head_dim", "head_dim_v",
               "window_left", "window_right", "materializes")
NUMBER_COLUMNS = ("softmax_scale", "dropout", "time_median_ms", "time_p20_ms", "time_p80_ms", "flops", "tflops",
                  "workspace_peak_bytes", "workspace_model_bytes", "device_peak_bytes", "io_bytes",
                  "dram_read_bytes", "dram_write_bytes", "l2_read_bytes", "l2_write_bytes",
                  "bytes_model_min", "bytes_model_variant")

# Verification: per output tensor t, columns err_{t}_{metric} (empty where t is not verified, e.g. the gradients
# of a forward row). Numbers: the errors against the fp64 reference, those of the baseline (standard attention
# in the run's dtype; empty on materializing rows, which have none) and of the fp32-upcast baseline, the floor of
# the baseline rule, the a-priori bounds (deterministic and probabilistic) and their tightness (bound / max abs).
# Text: the worst index "b,n,h,c" and the verdicts "1" / "0" / empty.
TENSORS = ("o", "lse", "dq", "dk", "dv")
ERROR_NUMBERS = ("max_abs", "rel_fro", "rmse", "bias", "max_rel",
                 "baseline", "baseline_rel_fro", "baseline_rmse", "baseline_bias", "baseline_max_rel",
                 "upcast", "upcast_rmse", "floor", "bound", "bound_prob", "tightness", "tightness_prob",
                 "prob_exceed")
ERROR_TEXTS = ("worst_index", "rule_pass", "bound_pass", "pass")
# Per row: which heads and query rows were verified ("all", a sample, or "none: why"), the verdict, the lambda
# of the probabilistic bound, and the variant's data path (the rounding points the bound assumes).
VERIFY_COLUMNS = ("verified_heads", "verified_rows", "verify_pass", "bound_lambda", "data_path")


def error_column(tensor: str, metric: str) -> str:
    """The column of one verification metric of one output tensor: err_o_max_abs."""
    return f"err_{tensor}_{metric}"


ERROR_COLUMNS = tuple(error_column(t, m) for t in TENSORS for m in ERROR_NUMBERS + ERROR_TEXTS)
NUMBER_COLUMNS += tuple(error_column(t, m) for t in TENSORS for m in ERROR_NUMBERS) + ("bound_lambda",)

STATUSES = ("ok", "oom", "unsupported", "error")
PASS_ORDER = ("fwd", "bwd", "fwdbwd")
DTYPE_ORDER = ("fp64", "fp32", "fp16", "bf16", "fp8_e4m3")

# Problem fields besides N (seqlen_q), head_dim, variant, pass and dtype that may tell two rows at the same N
# apart. Only those that actually do in a given file join the panel key (see setting_columns), so a batch
# that follows N (a fixed `tokens` axis) or a seqlen_k equal to seqlen_q splits nothing.
SETTING_COLUMNS = ("causal", "seqlen_k", "window_left", "window_right", "heads", "heads_kv", "head_dim_v",
                   "batch", "distribution", "softmax_scale", "varlen", "device", "dropout")

Row = Dict[str, Any]


class InputError(Exception):
    """Malformed input; the message is one line naming the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")


def read_table(path: str, required: Sequence[str], written_by: str) -> List[Dict[str, str]]:
    """The rows of a CSV file (text fields) that must have the `required` columns; written_by names what writes such
    a file, for the message. Raises InputError."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(path, f"missing column {missing[0]!r} (written by {written_by}?)")
            return list(reader)
    except OSError as e:
        raise InputError(path, e.strerror or str(e)) from e


@dataclass
class Results:
    """The rows of one results.csv, with numeric columns parsed (empty -> None) and text columns as str."""

    path: str
    columns: Tuple[str, ...]
    rows: List[Row]
    notes: List[str] = field(default_factory=list)  # what loading did that the report should say

    def has(self, column: str) -> bool:
        return column in self.columns

    def any_value(self, columns: Iterable[str]) -> bool:
        """Whether any row has a value in any of `columns`."""
        cols = [c for c in columns if self.has(c)]
        return any(row.get(c) not in (None, "") for row in self.rows for c in cols)

    def distinct(self, column: str) -> List[Any]:
        return ordered({row.get(column) for row in self.rows if self.has(column)}, column)


def _parse(value: str, column: str, path: str, line: int) -> Any:
    if value == "":
        return None
    try:
        if column in INT_COLUMNS:
            return int(value)
        number = float(value)
    except ValueError:
        raise InputError(path, f"line {line}: column '{column}': not a number: '{value}'") from None
    if math.isnan(number):
        return None
    return number


def load_results(path: str) -> Results:
    """Reads results.csv. Tolerates what the harness can leave behind: an incomplete last line (a crash while a
    row was written), header lines repeated by concatenated shards, and rows repeated under the same key
    (the last one wins). Raises InputError on anything else that is wrong."""
    if not os.path.isfile(path):
        raise InputError(path, "no such file")
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    notes: List[str] = []
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        if cut > 0:  # a header alone without a newline is complete enough
            text = text[:cut]
            notes.append("ignored an incomplete last line of results.csv")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or header == [] or header == [""]:
            raise InputError(path, "empty file (no header line)")
        header = [h.strip() for h in header]
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise InputError(path, "duplicate column " + ", ".join(f"'{c}'" for c in duplicates))
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            word = "column" if len(missing) == 1 else "columns"
            raise InputError(path, f"missing required {word} " + ", ".join(f"'{c}'" for c in missing))
        rows: List[Row] = []
        for fields in reader:
            line = reader.line_num
            if fields == header or not fields:
                continue  # a shard's header, or a blank line
            if len(fields) != len(header):
                raise InputError(path, f"line {line}: {len(fields)} fields, the header has {len(header)}")
            row: Row = {}
            for column, value in zip(header, fields):
                if column in INT_COLUMNS or column in NUMBER_COLUMNS:
                    row[column] = _parse(value.strip(), column, path, line)
                else:
                    row[column] = value
            rows.append(row)
    except csv.Error as e:
        raise InputError(path, f"line {reader.line_num}: {e}") from None

    if "key" in header:
        last: Dict[str, int] = {}
        for i, row in enumerate(rows):
            if row["key"]:
                last[row["key"]] = i
        kept = [row for i, row in enumerate(rows) if not row["key"] or last[row["key"]] == i]
        if len(kept) != len(rows):
            notes.append(f"{len(rows) - len(kept)} rows repeated under the same key: the last of each kept")
            rows = kept
    return Results(path=path, columns=tuple(header), rows=rows, notes=notes)


def load_run(path: str) -> Optional[Dict[str, Any]]:
    """Reads run.json; None when the file does not exist. Raises InputError when it is not a JSON object."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            run = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(run, dict):
        raise InputError(path, "not a JSON object")
    return run


COMMIT_DIGITS = 12  # of run.json's git_commit in a figure's caption and footer


def run_device(run: Optional[Dict[str, Any]]) -> Optional[str]:
    """The device of a run as the figures name it: run.json's `device.name`; for a CPU-only run (`device` null)
    "CPU", with the host's `cpu_model` where recorded ("CPU (Intel(R) Xeon(R) Processor)"); None when not
    recorded (no run.json, no device block, or one without a name)."""
    if run is None or "device" not in run:
        return None
    device = run["device"]
    if device is None:
        host = run.get("host")
        model = str(host.get("cpu_model") or "").strip() if isinstance(host, dict) else ""
        return f"CPU ({model})" if model and model != "unknown" else "CPU"
    return str(device["name"]) if isinstance(device, dict) and device.get("name") else None


def run_commit(run: Optional[Dict[str, Any]]) -> Optional[str]:
    """The commit a run was built from, short: the first COMMIT_DIGITS characters of run.json's `build.git_commit`
    (the commit the binary compiled, recorded at build time), else of its `git_commit` (the checkout the run started
    in: runs before the build block had one), and "(dirty)" where that tree had uncommitted changes (the harness's
    "+dirty" suffix, or `git_dirty` true for the checkout's); None when not recorded (the harness writes "unknown"
    where git found no commit)."""
    run = run or {}
    build = run.get("build")
    built = str(build.get("git_commit") or "").strip() if isinstance(build, dict) else ""
    if built and built.removesuffix("+dirty") != "unknown":
        commit, dirty = built, built.endswith("+dirty")
    else:
        commit = str(run.get("git_commit") or "").strip()
        dirty = commit.endswith("+dirty") or run.get("git_dirty") is True
    commit = commit.removesuffix("+dirty")
    if not commit or commit == "unknown":
        return None
    return commit[:COMMIT_DIGITS] + (" (dirty)" if dirty else "")


def run_stamp(run: Optional[Dict[str, Any]]) -> str:
    """The device and commit of a run, as each figure's caption and footer state them:
    "NVIDIA H200, commit 11ae650b498d (dirty)"; "device not recorded" / "commit not recorded" where run.json (or
    the field) is missing."""
    device = run_device(run) or "device not recorded"
    commit = run_commit(run)
    return f"{device}, " + (f"commit {commit}" if commit else "commit not recorded")


# --- variant names --------------------------------------------------------------------------------------

def split_variant(name: str) -> Tuple[str, Dict[str, str]]:
    """(registry id, run options) of a variant name `id[name=value,...]`, read as the harness reads it
    (harness/src/registry.cpp): options separated by commas, an option without '=' means "1". Spaces around
    ids, names and values are dropped. A name whose brackets do not close is all id, without options."""
    name = name.strip()
    open_ = name.find("[")
    if open_ < 0 or not name.endswith("]"):
        return name, {}
    options: Dict[str, str] = {}
    for term in name[open_ + 1:-1].split(","):
        if term.strip():
            key, equals, value = term.partition("=")
            options[key.strip()] = value.strip() if equals else "1"
    return name[:open_].strip(), options


# --- ordering --------------------------------------------------------------------------------------------

_PREFERRED = {"pass": PASS_ORDER, "dtype": DTYPE_ORDER, "status": STATUSES, "tensor": TENSORS}


def order_key(column: str) -> Callable[[Any], Tuple]:
    """A total, deterministic sort key for the values of `column`: the canonical order of passes, dtypes and
    statuses first, then numbers by value, then text; None last."""
    preferred = _PREFERRED.get(column, ())

    def key(value: Any) -> Tuple:
        if value is None or value == "":
            return (3, 0, 0.0, "")
        if value in preferred:
            return (0, preferred.index(value), 0.0, "")
        if isinstance(value, (int, float)):
            return (1, 0, float(value), "")
        return (2, 0, 0.0, str(value))

    return key


def ordered(values: Iterable[Any], column: str) -> List[Any]:
    return sorted(set(values), key=order_key(column))


def tuple_key(columns: Sequence[str]) -> Callable[[Tuple], Tuple]:
    """Sort key for tuples whose entries are values of `columns`."""
    keys = [order_key(c) for c in columns]
    return lambda values: tuple(k(v) for k, v in zip(keys, values))


# --- grouping --------------------------------------------------------------------------------------------

def plotted_rows(results: Results) -> List[Row]:
    """Rows that can put something on a figure: measured ones (ok) and out-of-memory ones (a marker), with N
    and d known."""
    return [row for row in results.rows
            if row["status"] in ("ok", "oom") and row["seqlen_q"] is not None and row["head_dim"] is not None]


def setting_columns(results: Results, identity: Sequence[str] = ("variant", "pass", "dtype", "head_dim"),
                    x: str = "seqlen_q") -> List[str]:
    """The SETTING_COLUMNS needed to tell apart the plotted rows that share `identity` and `x`, added in
    SETTING_COLUMNS order until no two such rows remain (or every candidate is used)."""
    rows = plotted_rows(results)
    chosen: List[str] = []
    for candidate in SETTING_COLUMNS:
        if not results.has(candidate):
            continue
        seen: Dict[Tuple, List[Any]] = {}
        for row in rows:
            seen.setdefault(tuple(row.get(c) for c in (*identity, *chosen, x)), []).append(row.get(candidate))
        clashes = [values for values in seen.values() if len(values) > 1]
        if not clashes:
            break
        if any(len(set(values)) > 1 for values in clashes):
            chosen.append(candidate)
    return chosen


def group_by(rows: Iterable[Row], columns: Sequence[str]) -> List[Tuple[Tuple, List[Row]]]:
    """Rows grouped by the values of `columns`, groups in deterministic order, rows in input order."""
    groups: Dict[Tuple, List[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(c) for c in columns), []).append(row)
    return [(k, groups[k]) for k in sorted(groups, key=tuple_key(columns))]


def points(rows: Iterable[Row], value: Callable[[Row], Optional[float]], x: str = "seqlen_q",
           status: Sequence[str] = ("ok",)) -> Tuple[List[int], List[float], int]:
    """(N values, values, merged) of the rows with one of `status` and a positive value, sorted by N; several
    values at one N (repeated measurements) become their median, and `merged` counts the extra ones."""
    at: Dict[int, List[float]] = {}
    for row in rows:
        if row["status"] not in status:
            continue
        v = value(row)
        if v is None or not math.isfinite(v) or v <= 0:
            continue
        at.setdefault(row[x], []).append(v)
    ns = sorted(at)
    return ns, [statistics.median(at[n]) for n in ns], sum(len(at[n]) - 1 for n in ns)


def column(name: str) -> Callable[[Row], Optional[float]]:
    return lambda row: row.get(name)


def column_sum(*names: str) -> Callable[[Row], Optional[float]]:
    """The sum of several columns; None when any of them is empty."""

    def value(row: Row) -> Optional[float]:
        parts = [row.get(n) for n in names]
        return None if any(p is None for p in parts) else float(sum(parts))

    return value


def oom_ns(rows: Iterable[Row], x: str = "seqlen_q") -> List[int]:
    return sorted({row[x] for row in rows if row["status"] == "oom"})


# --- verification ----------------------------------------------------------------------------------------

FAILED, UNVERIFIED, VERIFIED = "failed", "not verified", "verified"


def verification(row: Row) -> str:
    """FAILED for a row that did not run to the end (status error or oom) or failed its check (verify_pass 0);
    UNVERIFIED for a row whose verified_heads is empty or says "none: why"; VERIFIED otherwise (a row with
    errors but no verdict, a peer measured against fp64 without the rule, counts as verified)."""
    if row.get("status") in ("error", "oom") or str(row.get("verify_pass") or "").strip() == "0":
        return FAILED
    heads = str(row.get("verified_heads") or "").strip().lower()
    return UNVERIFIED if not heads or heads.startswith("none") else VERIFIED
