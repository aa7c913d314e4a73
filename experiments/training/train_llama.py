"""A short training run of a small Llama model on flashlab, sdpa and eager attention: loss curves, tokens/s, memory.

    python3 experiments/training/train_llama.py --out results/training/h200 \
        [--impls flashlab,sdpa,eager] [--variant flash2] [--steps 300] [--device cuda] [--preset gpu]

The model is a transformers LlamaForCausalLM built from a small config (random weights, nothing downloaded),
initialised once with a fixed seed; every implementation trains a copy of the same weights on the same batches in
the same order, with AdamW. Only the attention implementation differs: attn_implementation="flashlab" (flashlab's
`--variant` through flashlab.integrations.transformers: the padding mask unpadded into a varlen call), "sdpa"
(PyTorch's scaled_dot_product_attention with a 4-D mask) and "eager" (the materialized N x N softmax).

Data (made here, deterministically from --seed; nothing is read): sequences of variable length, right-padded to
the preset's sequence length, with the attention mask marking the valid tokens (so the padding path runs) and the
padding's labels ignored. Each sequence is BOS, a walk A on a seeded sparse Markov chain (every symbol has a few
successors with Dirichlet-drawn probabilities), then A again from its start, cut at the sequence's length. The
loss falls from ln(vocab) towards the chain's entropy once the transitions are learned (`markov_entropy_nats` in
the summary), and below it once the model copies the second half from the first (induction), which only
attention can do.

Presets: `gpu` (hidden 768, 8 layers, 12 query heads of d = 64 over 4 key/value heads, sequences of 256 ... 1024
tokens in batches of 16, 300 steps; mixed precision: float32 weights and AdamW state, bfloat16 autocast, so the
attention runs in bfloat16) and `tiny` (2 layers of 2 heads at d = 32 over one key/value head, 4 x 64 tokens; the
default on the CPU, in float32, a few seconds; on a GPU with --dtype bf16 a quick check of the flash2 path).

Measured per implementation: the loss of every step; tokens/s over the steps after --warmup (valid tokens, i.e.
without padding, between two torch.cuda.synchronize() calls); the peak of torch.cuda.max_memory_allocated (and
reserved) from the model's copy onto the device to the last step, with the statistics reset between
implementations. On the CPU neither memory figure is measured (empty).

Written into --out as each implementation finishes (temporary file + rename, so a crash leaves the previous
complete files): losses.csv (impl, step, loss, tokens), summary.csv (a row per implementation) and summary.json
(the same with the config, versions, device, commit, date and command). An --out that already holds a run of the
same config keeps the implementations this call does not run (so they can run one at a time); one of another
config is refused. Exit status: 0, 1 when an implementation failed (its status says why; the others still run),
2 on bad arguments (one line on stderr).

The figure: python3 -m reports.training DIR (reports/training.py).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import gc
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
IMPLS = ("flashlab", "sdpa", "eager")
LOSSES_FILE = "losses.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
LOSS_COLUMNS = ("impl", "step", "loss", "tokens")
SUMMARY_COLUMNS = ("impl", "attn_implementation", "variant", "status", "steps", "timed_steps", "timed_tokens",
                   "elapsed_s", "tokens_per_s", "peak_allocated_bytes", "peak_reserved_bytes", "final_loss",
                   "final_loss_mean10", "device", "dtype", "torch", "transformers", "git_commit", "date")
PAD, BOS = 0, 1  # token ids; the Markov chain's symbols are 2 ... vocab - 1

# hidden = heads * head_dim; GQA 3:1 (gpu) and 2:1 (tiny: d = 32, the smallest flash2 has). The gpu preset: 51M
# parameters and 16K token positions per step (10K valid on average), a few hundred steps of each implementation
# within a minute or so on an H200 (estimated from its flops); eager keeps B * H * N^2 probabilities per layer
# (16 * 12 * 1024^2, about 1.2 GB in bfloat16 and float32; some 10 GB over 8 layers).
PRESETS: Dict[str, Dict[str, Any]] = {
    "gpu": dict(vocab=512, hidden=768, layers=8, heads=12, kv_heads=4, head_dim=64, intermediate=2048,
                seqlen=1024, min_len=256, batch=16, successors=4, lr=1e-3, steps=300, warmup=10, dtype="bf16"),
    "tiny": dict(vocab=64, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128,
                 seqlen=64, min_len=16, batch=4, successors=4, lr=3e-3, steps=30, warmup=2, dtype="fp32"),
}


class Failure(Exception):
    """A bad argument or a missing requirement: one line on stderr, exit status 2."""


# --- data ------------------------------------------------------------------------------------------------

def make_data(preset: Dict[str, Any], steps: int, seed: int):
    """(ids [steps, B, N] int64, lengths [steps, B] int64, markov_entropy_nats): the batches of every step, the
    same for every implementation. Row b of step s is BOS, A, A again (cut at its length), PAD after it. The chain
    comes from (seed, 0), step s's batch from (seed, 1, s) alone, so a longer run starts with the same batches."""
    vocab, seqlen, batch, k = preset["vocab"], preset["seqlen"], preset["batch"], preset["successors"]
    symbols = vocab - 2
    chain = np.random.default_rng([seed, 0])
    successors = np.stack([chain.choice(symbols, size=k, replace=False) for _ in range(symbols)])  # [S, k]
    probs = chain.dirichlet(np.full(k, 0.5), size=symbols)                                        # [S, k]
    cumulative = np.cumsum(probs, axis=1)
    cumulative[:, -1] = 1.0
    half = seqlen // 2  # the longest A: ceil((seqlen - 1) / 2)
    draws = [np.random.default_rng([seed, 1, step]) for step in range(steps)]
    lengths = np.concatenate([g.integers(preset["min_len"], seqlen + 1, size=batch) for g in draws])  # BOS included
    walk = np.empty((steps * batch, half), dtype=np.int64)
    walk[:, 0] = np.concatenate([g.integers(0, symbols, size=batch) for g in draws])
    uniform = np.concatenate([g.random((batch, half)) for g in draws])
    for t in range(1, half):
        choice = (uniform[:, t, None] > cumulative[walk[:, t - 1]]).sum(axis=1)
        walk[:, t] = successors[walk[:, t - 1], np.minimum(choice, k - 1)]
    m = lengths // 2                                               # len(A) = ceil((L - 1) / 2)
    t = np.arange(seqlen - 1)[None, :]
    source = np.where(t < m[:, None], t, t - m[:, None])           # body position t reads A[source]
    body = np.take_along_axis(walk, np.minimum(source, half - 1), axis=1) + 2
    ids = np.full((steps * batch, seqlen), PAD, dtype=np.int64)
    ids[:, 0] = BOS
    ids[:, 1:] = np.where(t < (lengths - 1)[:, None], body, PAD)
    # the chain's mean entropy per transition along a walk of `half` symbols from a uniform start
    transition = np.zeros((symbols, symbols))
    np.put_along_axis(transition, successors, probs, axis=1)
    row_entropy = -(probs * np.log(probs)).sum(axis=1)
    state, entropy = np.full(symbols, 1.0 / symbols), 0.0
    for _ in range(half - 1):
        entropy += float(state @ row_entropy) / (half - 1)
        state = state @ transition
    return ids.reshape(steps, batch, seqlen), lengths.reshape(steps, batch), entropy


# --- files -----------------------------------------------------------------------------------------------

def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, flushes it to disk, then renames it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def csv_text(columns, rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def git_commit() -> str:
    """HEAD of the repository this script lies in, with '+dirty' where tracked files differ (as run.json)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--verify", "--quiet", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU (" + line.split(":", 1)[1].strip() + ")"
    except OSError:
        pass
    return "CPU (" + (platform.processor() or platform.machine()) + ")"


class Output:
    """The files of --out: the results of earlier calls with the same config, updated as implementations finish."""

    def __init__(self, out: Path, config: Dict[str, Any], header: Dict[str, Any], running: List[str]):
        self.out, self.config, self.header = out, config, header
        self.runs: List[Dict[str, Any]] = []
        self.losses: List[Dict[str, Any]] = []
        out.mkdir(parents=True, exist_ok=True)
        summary = out / SUMMARY_JSON
        if summary.exists():
            try:
                old = json.loads(summary.read_text(encoding="utf-8"))
                old_config, old_runs = old["config"], old["runs"]
            except (ValueError, KeyError, TypeError) as e:
                raise Failure(f"{summary}: not a summary of this script ({e}); use another --out") from e
            if old_config != config:
                changed = sorted(k for k in set(old_config) | set(config) if old_config.get(k) != config.get(k))
                raise Failure(f"{out} holds a run of another config (differs in {', '.join(changed)}); use another "
                              "--out")
            self.runs = [r for r in old_runs if r.get("impl") not in running]
            kept = {r["impl"] for r in self.runs}
            if (out / LOSSES_FILE).exists():
                with open(out / LOSSES_FILE, newline="", encoding="utf-8") as f:
                    self.losses = [r for r in csv.DictReader(f) if r.get("impl") in kept]

    def add(self, run: Dict[str, Any], losses: List[Dict[str, Any]]) -> None:
        self.runs = [r for r in self.runs if r["impl"] != run["impl"]] + [run]
        self.losses = [r for r in self.losses if r["impl"] != run["impl"]] + losses
        atomic_write(self.out / LOSSES_FILE, csv_text(LOSS_COLUMNS, self.losses))
        atomic_write(self.out / SUMMARY_CSV, csv_text(SUMMARY_COLUMNS, self.runs))
        document = dict(self.header, config=self.config, runs=self.runs)
        atomic_write(self.out / SUMMARY_JSON, json.dumps(document, indent=2, sort_keys=False) + "\n")


# --- training --------------------------------------------------------------------------------------------

def build_model(transformers, torch, preset: Dict[str, Any], seed: int):
    """The initial model, in float32 on the CPU (every implementation copies it: the same weights)."""
    config = transformers.LlamaConfig(
        vocab_size=preset["vocab"], hidden_size=preset["hidden"], intermediate_size=preset["intermediate"],
        num_hidden_layers=preset["layers"], num_attention_heads=preset["heads"],
        num_key_value_heads=preset["kv_heads"], head_dim=preset["head_dim"],
        max_position_embeddings=preset["seqlen"], pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None,
        use_cache=False, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    return model.float()


def set_attention(model, name: str) -> None:
    """The same weights under another attention implementation. Set on the config, which the attention layers and
    the mask builder read at each forward (as tests/python/test_transformers.py does): model.set_attn_implementation
    takes a name holding "flash" for a flash-attn kernel to fetch from the hub (transformers 5)."""
    model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        raise RuntimeError(f"the model runs {model.config._attn_implementation!r}, not {name!r}")


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then a cosine down to a tenth of the peak."""
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm - 1)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def train(torch, base, name: str, ids, lengths, args, preset) -> Dict[str, Any]:
    """Trains a copy of `base` under attention `name`; returns the per-step losses and the measurements."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast = args.dtype == "bf16"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(base).to(device)
    set_attention(model, name)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset["lr"], betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.1, **({"fused": True} if cuda else {}))
    all_ids = torch.from_numpy(ids)
    if cuda:
        all_ids = all_ids.pin_memory()  # so that each step's copy runs asynchronously
    all_lengths = torch.from_numpy(lengths).to(device)
    positions = torch.arange(ids.shape[2], device=device)
    losses, start = [], None
    for step in range(args.steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        batch_ids = all_ids[step].to(device, non_blocking=True)
        mask = (positions[None, :] < all_lengths[step][:, None]).long()  # right padding
        labels = batch_ids.masked_fill(mask == 0, -100)                    # no loss on the padding
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, preset["lr"])
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=batch_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())  # no host synchronisation per step: fetched at the end
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    values = torch.stack(losses).float().cpu().tolist()
    peak_allocated = torch.cuda.max_memory_allocated(device) if cuda else None
    peak_reserved = torch.cuda.max_memory_reserved(device) if cuda else None
    del model, optimizer, losses, loss, all_ids, all_lengths
    timed_tokens = int(lengths[args.warmup:].sum())
    return dict(losses=values, timed_steps=args.steps - args.warmup, timed_tokens=timed_tokens, elapsed_s=elapsed,
                tokens_per_s=timed_tokens / elapsed if elapsed > 0 else None, peak_allocated_bytes=peak_allocated,
                peak_reserved_bytes=peak_reserved)


# --- command line ----------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage
        raise Failure(message)


def parse(argv: Optional[List[str]]):
    parser = Parser(prog="train_llama.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (losses.csv, summary.csv/json)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated: flashlab, sdpa, eager")
    parser.add_argument("--variant", help="flashlab's variant (default: flash2 on cuda, cpu-standard on cpu)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="model and data (default: gpu on cuda, tiny on cpu)")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's, 300 for gpu)")
    parser.add_argument("--warmup", type=int, help="steps left out of tokens/s (default: the preset's)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"),
                        help="bf16: float32 weights with bfloat16 autocast; fp32: float32 throughout "
                             "(default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="weights and data (default 0)")
    args = parser.parse_args(argv)
    args.preset = args.preset or ("gpu" if args.device == "cuda" else "tiny")
    preset = dict(PRESETS[args.preset])
    args.steps = preset["steps"] if args.steps is None else args.steps
    args.warmup = preset["warmup"] if args.warmup is None else args.warmup
    args.dtype = args.dtype or preset["dtype"]
    args.variant = args.variant or ("flash2" if args.device == "cuda" else "cpu-standard")
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = [s for s in impls if s not in IMPLS]
    if unknown or not impls:
        raise Failure(f"--impls: unknown implementation {', '.join(unknown) or '(none given)'}; choose from "
                      f"{', '.join(IMPLS)}")
    if len(set(impls)) != len(impls):
        raise Failure(f"--impls: {args.impls} names an implementation twice")
    args.impls = impls
    if args.steps < 1:
        raise Failure(f"--steps {args.steps}: at least 1")
    if not 0 <= args.warmup < args.steps:
        raise Failure(f"--warmup {args.warmup}: 0 or more and fewer than --steps ({args.steps})")
    return args, preset


def load_requirements(args):
    """torch and transformers, the device, and flashlab's library and variant where flashlab runs."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise Failure(f"needs PyTorch and transformers ({e})") from e
    if args.device == "cuda" and not torch.cuda.is_available():
        raise Failure("--device cuda: no CUDA device (torch.cuda.is_available() is False); --device cpu runs the "
                      "tiny preset")
    if "flashlab" in args.impls:
        try:
            import flashlab
        except ImportError:  # not installed: the repository's package
            sys.path.insert(0, str(ROOT / "python"))
            import flashlab
        try:
            known = flashlab.variants()
        except ImportError as e:
            raise Failure(str(e).splitlines()[0]) from e
        base = args.variant.split("[", 1)[0]
        if base not in known:
            raise Failure(f"--variant {args.variant}: not in this libflashlab ({', '.join(known)})")
        on_cpu = base.startswith("cpu-")
        if on_cpu != (args.device == "cpu"):
            raise Failure(f"--variant {args.variant} runs on the {'CPU' if on_cpu else 'GPU'}, not on --device "
                          f"{args.device}")
        import flashlab.integrations.transformers as fl_transformers
        try:
            fl_transformers.register(variant=args.variant)
        except ImportError as e:
            raise Failure(str(e)) from e
    return torch, transformers


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args, preset = parse(argv)
        torch, transformers = load_requirements(args)
        ids, lengths, entropy = make_data(preset, args.steps, args.seed)
        cuda = args.device == "cuda"
        device_name = torch.cuda.get_device_name(torch.device("cuda")) if cuda else cpu_name()
        config = dict(preset=args.preset, model={k: preset[k] for k in ("vocab", "hidden", "layers", "heads",
                                                                          "kv_heads", "head_dim", "intermediate")},
                      data=dict(seqlen=preset["seqlen"], min_len=preset["min_len"], batch=preset["batch"],
                                successors=preset["successors"], padding="right", seed=args.seed,
                                markov_entropy_nats=entropy),
                      optimizer=dict(name="AdamW", lr=preset["lr"], betas=[0.9, 0.95], weight_decay=0.1,
                                     schedule="linear warm-up 5%, cosine to 0.1", clip_grad_norm=1.0),
                      steps=args.steps, warmup=args.warmup, dtype=args.dtype, device=args.device,
                      device_name=device_name)
        memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if cuda else None
        header = dict(device=dict(type=args.device, name=device_name, memory_bytes=memory),
                      versions=dict(python=platform.python_version(), torch=torch.__version__,
                                    cuda=torch.version.cuda, transformers=transformers.__version__,
                                    numpy=np.__version__),
                      git_commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"),
                      command=" ".join([os.path.basename(sys.argv[0]) or "train_llama.py", *(argv or sys.argv[1:])]))
        output = Output(Path(args.out), config, header, args.impls)
    except Failure as e:
        print(f"train_llama.py: {e}", file=sys.stderr)
        return 2
    base = build_model(transformers, torch, preset, args.seed)
    print(f"train_llama.py: {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters, {args.steps} steps "
          f"of {preset['batch']} x {preset['seqlen']} tokens, {args.dtype}, {device_name}", flush=True)
    failed = 0
    for impl in args.impls:
        run = dict(impl=impl, attn_implementation=impl, variant=args.variant if impl == "flashlab" else "",
                   steps=args.steps, device=device_name, dtype=args.dtype, torch=torch.__version__,
                   transformers=transformers.__version__, git_commit=header["git_commit"],
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        rows = []
        try:
            result = train(torch, base, impl, ids, lengths, args, preset)
        except Exception as e:  # noqa: BLE001 - any failure of one implementation is recorded; the others run
            failed += 1
            message = " ".join(f"{type(e).__name__}: {e}".split())[:500]
            run.update(status=f"error: {message}")
            print(f"train_llama.py: {impl}: {message}", file=sys.stderr, flush=True)
        else:
            losses = result.pop("losses")
            bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
            run.update(status="ok" if bad is None else f"error: non-finite loss from step {bad}", **result)
            run.update(final_loss=losses[-1], final_loss_mean10=float(np.mean(losses[-10:])))
            failed += bad is not None
            rows = [dict(impl=impl, step=i, loss=repr(v), tokens=int(lengths[i].sum())) for i, v in enumerate(losses)]
            peak = run["peak_allocated_bytes"]
            print(f"train_llama.py: {impl}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
                  f"{run['tokens_per_s']:.0f} tokens/s" + (f", peak {peak / 2**30:.2f} GiB" if peak else "")
                  + f" ({run['elapsed_s']:.1f} s timed)", flush=True)
        finally:
            if args.device == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
        output.add(run, rows)
    print(f"train_llama.py: wrote {Path(args.out) / SUMMARY_JSON}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
