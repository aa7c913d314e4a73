"""Which problems of a flashlab run a peer measures, and the peers.csv row of each measurement, without PyTorch.

torch_sdpa.py times; this module decides what it times and what it writes, so that the decisions are tested on any
machine (tests/peers/test_torch_sdpa.py): the rows taken from results.csv, the distinct problems among them (one
measurement per problem, flashlab's inputs and dropout), the problems PyTorch SDPA cannot express, and the peers.csv
row (flashlab's columns, variant torch-<backend>) of a measurement, of an unsupported problem or of a failed call.

Dropout: a row with `dropout` p > 0 is its own problem (p = 0 and p = 0.1 of one shape are two measurements). Its
peer draws PyTorch's own mask, which is not flashlab's (core/dropout.hpp), so no reference output exists for it: its
row is not verified (`verified_heads` says why) and takes torch.randn inputs. Its `dropout` is flashlab's row's, its
`dropout_seed` empty (the mask comes from PyTorch's default CUDA generator, not from a flashlab seed); its `key` is
flashlab's row's with the variant replaced, `|dropout=..|dropout_seed=..` included, so it names the row it stands
beside. A results.csv without the `dropout` column is read as p = 0 throughout.
"""

import math
import statistics

import flashlab_inputs

# results.csv columns that make a problem, as PyTorch SDPA sees it (dropout apart: `dropout_of`).
IDENTITY = ["pass", "dtype", "batch", "heads", "heads_kv", "seqlen_q", "seqlen_k", "head_dim", "head_dim_v",
            "causal", "window_left", "window_right", "softmax_scale", "varlen"]
# results.csv columns a peer's row takes from flashlab's row as they are.
COPIED = IDENTITY + ["suite", "run_id", "seed", "distribution", "flops"]
# dtypes measured for PyTorch SDPA (torch_sdpa.DTYPES maps them to torch dtypes).
MEASURED_DTYPES = ("fp16", "bf16", "fp32")
REASON_CHARS = 300  # of a failed call's reason


def quantile(sorted_values, q):
    at = q * (len(sorted_values) - 1)
    lo = math.floor(at)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (at - lo) * (sorted_values[hi] - sorted_values[lo])


def select_rows(rows, variant=None, terms=()):
    """The GPU rows of results.csv (csv.DictReader rows) a peer measures: of `variant` (None: every variant), and
    matching every (column, value) of `terms` (--filter)."""
    return [r for r in rows if r.get("device") == "cuda" and (variant is None or r["variant"] == variant)
            and all(r.get(k) == v for k, v in terms)]


def problem_of(row):
    return {k: row[k] for k in IDENTITY}


def dropout_of(row):
    """The row's dropout probability; 0 where results.csv has no `dropout` column (a run older than dropout)."""
    return float(row.get("dropout") or 0)


def input_spec(row):
    """(seed, distribution) of flashlab's inputs for this row, or (None, why not) when the run does not say them."""
    seed, distribution = row.get("seed") or "", row.get("distribution") or ""
    if not seed or not distribution:
        return None, "results.csv has no seed / distribution"
    if distribution not in flashlab_inputs.DISTRIBUTIONS:
        return None, f"distribution {distribution} is not ported in flashlab_inputs.py"
    return (int(seed), distribution), None


def distinct_problems(rows):
    """(first row, problem) of each distinct measurement among `rows`, in file order: one per problem, inputs
    (seed, distribution) and dropout (p, and flashlab's mask seed where p > 0, so that each flashlab row has a peer
    row of its own key)."""
    problems, seen = [], set()
    for r in rows:
        p = problem_of(r)
        dropout = dropout_of(r)
        key = tuple(p.values()) + (input_spec(r)[0], dropout, r.get("dropout_seed") if dropout > 0 else None)
        if key not in seen:
            seen.add(key)
            problems.append((r, p))
    return problems


def unsupported_reason(p):
    if p["varlen"] == "1":
        return "varlen batches are not measured for PyTorch SDPA"
    if p["window_left"] != "-1" or p["window_right"] != "-1":
        return "sliding windows are not supported by PyTorch SDPA"
    if p["causal"] == "1" and p["seqlen_q"] != p["seqlen_k"]:
        return "PyTorch SDPA's causal mask is top-left aligned; flashlab's is bottom-right (N_q != N_k)"
    if p["dtype"] not in MEASURED_DTYPES:
        return f"dtype {p['dtype']} is not measured for PyTorch SDPA"
    return None


def unverified_dropout(dropout):
    """verified_heads of a peer row with dropout: why it has no error columns."""
    return (f"none: dropout {dropout:g} draws PyTorch's own mask, not flashlab's: no reference output to compare "
            "with")


def inputs_of(source, p, verify_max_n):
    """(spec, why not) of the inputs a problem is measured on: flashlab's (seed, distribution), or None with the
    reason the peer draws torch.randn inputs instead (values change no timing)."""
    dropout = dropout_of(source)
    if dropout > 0:  # not verified: flashlab's values would be compared with nothing
        return None, f"dropout {dropout:g}, not verified"
    spec, no_spec = input_spec(source)
    if spec is not None and max(int(p["seqlen_q"]), int(p["seqlen_k"])) > verify_max_n:
        # not verified: the values change no timing, and porting them costs seconds per problem
        spec, no_spec = None, f"N > --verify-max-n {verify_max_n}, not verified"
    return spec, no_spec


def warns_randn(source, p, spec, no_spec):
    """Whether torch.randn inputs are worth a line on stderr: only where flashlab's could not be had for a row that
    would have been verified (not for large or dropout rows, which are measured on torch.randn on purpose)."""
    return (spec is None and unsupported_reason(p) is None and "--verify-max-n" not in no_spec
            and dropout_of(source) == 0)


def peer_row(source, columns, backend):
    """The identity of the peers.csv row of `backend` beside flashlab's row `source`: flashlab's problem columns
    (and its `dropout`; `dropout_seed` stays empty), variant torch-<backend>, and source's key with the variant
    replaced."""
    row = {k: source[k] for k in columns if k in COPIED + ["dropout"]}
    variant = f"torch-{backend}"
    row.update(variant=variant, device="cuda", materializes="1" if backend == "math" else "0",
               key="|".join(["variant=" + variant] + source["key"].split("|")[1:]))
    return row


def measured(row, source, m, warmup, verify_max_n, no_spec, spec_known):
    """`row` completed with a measurement `m` ({"times": ms, "workspace", "io", "errors": {tensor: (max abs,
    rel fro)}}): status ok, time statistics, speed, memory, errors and what was verified."""
    t = sorted(m["times"])
    median = statistics.median(t)
    row.update(status="ok", warmup=warmup, time_samples=len(t), time_median_ms=median,
               time_p20_ms=quantile(t, 0.2), time_p80_ms=quantile(t, 0.8), time_min_ms=t[0],
               time_spread=(quantile(t, 0.8) - quantile(t, 0.2)) / median,
               tflops=float(source["flops"]) / (median * 1e-3) / 1e12,
               workspace_peak_bytes=m["workspace"], io_bytes=m["io"],
               device_peak_bytes=m["workspace"] + m["io"])
    for name, (max_abs, rel) in m["errors"].items():
        row[f"err_{name}_max_abs"] = max_abs
        row[f"err_{name}_rel_fro"] = rel
    dropout = dropout_of(source)
    if dropout > 0:
        row["verified_heads"] = unverified_dropout(dropout)
        return row
    row["verified_heads"] = "all (vs float64 math on the same inputs)" if m["errors"] else \
        f"none: N > --verify-max-n {verify_max_n}"
    if not spec_known:
        row["verified_heads"] += f"; torch.randn inputs ({no_spec})"
    return row


def problem_rows(source, p, columns, backends, attempt, warmup, verify_max_n, no_spec, spec_known):
    """The peers.csv rows of one problem, one per backend in order, each yielded as soon as it is made (the caller
    writes it at once). attempt(backend) measures: ("ok", measurement as `measured` takes it), or ("oom" |
    "unsupported", reason); it is not called for a problem PyTorch SDPA cannot express."""
    reason = unsupported_reason(p)
    for backend in backends:
        row = peer_row(source, columns, backend)
        if reason:
            row.update(status="unsupported", reason=reason)
        else:
            status, outcome = attempt(backend)
            if status == "ok":
                measured(row, source, outcome, warmup, verify_max_n, no_spec, spec_known)
            else:
                row.update(status=status, reason=outcome)
        yield row


def failure_reason(message, dropout=0.0, warnings=()):
    """The reason of a backend's RuntimeError: its first line; with dropout, also those of PyTorch's warnings (their
    texts) that name dropout, once each (its dispatcher says why no kernel took the call only in warnings: 'No
    available kernel' alone does not say that cuDNN takes dropout in steps of 1/16)."""
    reason = str(message).splitlines()[0] if str(message) else ""
    if dropout > 0:
        said = [" ".join(str(w).split()) for w in warnings if "dropout" in str(w).lower()]
        if said:
            reason += " (" + "; ".join(dict.fromkeys(said)) + ")"
    return reason[:REASON_CHARS]
