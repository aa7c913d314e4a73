"""Measure PyTorch's scaled_dot_product_attention backends on the problems of a flashlab run.

Reads RESULTS_DIR/results.csv (the rows flashlab ran), takes each distinct GPU problem, and times it with the
chosen SDPA backends (math, flash, cudnn, efficient) under flashlab's protocol: warm-up, then cold repetitions
(an L2-sized buffer overwritten before each, outside the timed interval), CUDA events, median / p20 / p80 / min.
Writes RESULTS_DIR/peers.csv with flashlab's columns (variant = torch-<backend>), so one report shows both.

    python3 experiments/peers/torch_sdpa.py RESULTS_DIR [--backends math,flash,cudnn,efficient] [--variant standard]

Peers see their own natural layout [B, H, N, d] (contiguous) and inputs drawn with torch.randn (the timing does not
depend on the values); their error is measured against float64 math attention on the same inputs for problems up
to --verify-max-n. Masks: causal with N_q == N_k only (PyTorch's causal mask is top-left aligned); windows and
varlen batches are recorded as unsupported.
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
IDENTITY = ["pass", "dtype", "batch", "heads", "heads_kv", "seqlen_q", "seqlen_k", "head_dim", "head_dim_v",
            "causal", "window_left", "window_right", "softmax_scale", "varlen"]


def quantile(sorted_values, q):
    at = q * (len(sorted_values) - 1)
    lo = math.floor(at)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (at - lo) * (sorted_values[hi] - sorted_values[lo])


def cold_times(region, warmup, repetitions, flush):
    for _ in range(warmup):
        region()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repetitions)]
    for start, stop in events:
        flush.zero_()  # cold L2, outside the timed interval
        start.record()
        region()
        stop.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(stop) for start, stop in events]


def problem_of(row):
    return {k: row[k] for k in IDENTITY}


def unsupported_reason(p):
    if p["varlen"] == "1":
        return "varlen batches are not measured for PyTorch SDPA"
    if p["window_left"] != "-1" or p["window_right"] != "-1":
        return "sliding windows are not supported by PyTorch SDPA"
    if p["causal"] == "1" and p["seqlen_q"] != p["seqlen_k"]:
        return "PyTorch SDPA's causal mask is top-left aligned; flashlab's is bottom-right (N_q != N_k)"
    if p["dtype"] not in DTYPES:
        return f"dtype {p['dtype']} is not measured for PyTorch SDPA"
    return None


def measure(p, backend, warmup, repetitions, flush, verify_max_n):
    b, h, hkv = int(p["batch"]), int(p["heads"]), int(p["heads_kv"])
    nq, nk, d, dv = int(p["seqlen_q"]), int(p["seqlen_k"]), int(p["head_dim"]), int(p["head_dim_v"])
    dtype = DTYPES[p["dtype"]]
    causal = p["causal"] == "1"
    scale = float(p["softmax_scale"])
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, nq, d, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(b, hkv, nk, d, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(b, hkv, nk, dv, device="cuda", dtype=dtype, generator=gen)
    d_out = torch.randn(b, h, nq, dv, device="cuda", dtype=dtype, generator=gen)
    backward = p["pass"] != "fwd"
    for t in (q, k, v):
        t.requires_grad_(backward)
    io_bytes = sum(t.numel() * t.element_size() for t in (q, k, v, d_out))

    def forward():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                                                enable_gqa=hkv != h)

    with sdpa_kernel([BACKENDS[backend]]):
        out = forward()  # raises when the backend cannot run this problem
        if backward:
            out.backward(d_out)
        torch.cuda.synchronize()
        saved = {"o": out.detach().clone()}
        if backward:
            saved.update(dq=q.grad.clone(), dk=k.grad.clone(), dv=v.grad.clone())
        if p["pass"] == "fwd":
            region = forward
        elif p["pass"] == "bwd":
            out = forward()
            region = lambda: torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)  # noqa: E731
        else:
            region = lambda: torch.autograd.grad(forward(), (q, k, v), d_out)  # noqa: E731
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = cold_times(region, warmup, repetitions, flush)
        peak = torch.cuda.max_memory_allocated() - base
    result = {"times": times, "workspace": peak, "io": io_bytes, "errors": {}}
    if max(nq, nk) <= verify_max_n:
        q64, k64, v64 = (t.detach().double().requires_grad_(backward) for t in (q, k, v))
        with sdpa_kernel([SDPBackend.MATH]):
            ref = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, is_causal=causal, scale=scale,
                                                                   enable_gqa=hkv != h)
        refs = {"o": ref.detach()}
        if backward:
            ref.backward(d_out.double())
            refs.update(dq=q64.grad, dk=k64.grad, dv=v64.grad)
        for name, r in refs.items():
            diff = (saved[name].double() - r).abs()
            result["errors"][name] = (diff.max().item(), (torch.linalg.vector_norm(saved[name].double() - r) /
                                                          torch.linalg.vector_norm(r)).item())
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir")
    parser.add_argument("--backends", default="math,flash,cudnn,efficient")
    parser.add_argument("--variant", default=None, help="take the problems of this flashlab variant only")
    parser.add_argument("--filter", default="", help="column=value[,column=value...]: rows to take, e.g. pass=fwd,seqlen_q=4096")
    parser.add_argument("--verify-max-n", type=int, default=8192)
    args = parser.parse_args()

    csv_path = os.path.join(args.results_dir, "results.csv")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        terms = [t.split("=", 1) for t in args.filter.split(",") if t]
        rows = [r for r in reader if r.get("device") == "cuda" and (args.variant is None or r["variant"] == args.variant)
                and all(r.get(k) == v for k, v in terms)]
    info = {}
    if os.path.exists(os.path.join(args.results_dir, "run.json")):
        with open(os.path.join(args.results_dir, "run.json")) as f:
            info = json.load(f)
    warmup, repetitions = int(info.get("warmup", 3)), int(info.get("repetitions", 10))
    problems, seen = [], set()
    for r in rows:
        p = problem_of(r)
        key = tuple(p.values())
        if key not in seen:
            seen.add(key)
            problems.append((r, p))

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    flush = torch.empty(2 * l2 // 4, dtype=torch.float32, device="cuda")
    out_path = os.path.join(args.results_dir, "peers.csv")
    with open(out_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for source, p in problems:
            for backend in args.backends.split(","):
                row = {k: source[k] for k in columns if k in IDENTITY + ["suite", "run_id", "seed", "distribution", "flops"]}
                variant = f"torch-{backend}"
                row.update(variant=variant, device="cuda", materializes="1" if backend == "math" else "0",
                           key="|".join(["variant=" + variant] + source["key"].split("|")[1:]))
                reason = unsupported_reason(p)
                if reason:
                    row.update(status="unsupported", reason=reason)
                else:
                    try:
                        m = measure(p, backend, warmup, repetitions, flush, args.verify_max_n)
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
                        row["verified_heads"] = "all (vs float64 math on the same inputs)" if m["errors"] else \
                            f"none: N > --verify-max-n {args.verify_max_n}"
                    except torch.cuda.OutOfMemoryError as e:
                        row.update(status="oom", reason=str(e).splitlines()[0])
                    except RuntimeError as e:
                        row.update(status="unsupported", reason=str(e).splitlines()[0][:300])
                    torch.cuda.empty_cache()
                writer.writerow(row)
                f.flush()
                print(f"{variant} {p['pass']} {p['dtype']} B={p['batch']} H={p['heads']} N={p['seqlen_q']} "
                      f"d={p['head_dim']} causal={p['causal']}: {row['status']} {row.get('time_median_ms', '')}",
                      file=sys.stderr)
    print(out_path)


if __name__ == "__main__":
    main()
