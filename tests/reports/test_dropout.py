"""The cost of dropout (reports/dropout.py) on a synthetic run of experiments/dropout.toml's shape with peers.

The run: flash2 forward and backward, d = 64, causal and not, N = 1024 and 4096, each at p = 0 and p = 0.1 (its key
names the dropout at p > 0 only, as the harness writes it), one p = 0.1 row that failed (`error`) and one at N = 16384
without a twin; peers.csv as experiments/peers/torch_sdpa.py writes it: torch-flash and torch-efficient at both p,
torch-cudnn at p = 0 and `unsupported` at p = 0.1 (cuDNN takes dropout in steps of 1/16). Every time is written by the
test, so each expected ratio is the test's own quotient of the two times it wrote.
"""

import csv
import os
import shutil
import statistics
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from reports import data, dropout, figures, style  # noqa: E402
from reports.cli import make_report  # noqa: E402
from reports.tables import Code, Strong, Table  # noqa: E402

RUN_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "memory_scaling"
COLUMNS = ["key", "suite", "run_id", "variant", "pass", "dtype", "distribution", "seed", "batch", "heads", "heads_kv",
           "seqlen_q", "seqlen_k", "head_dim", "head_dim_v", "causal", "window_left", "window_right",
           "softmax_scale", "varlen", "materializes", "device", "dropout", "dropout_seed", "status", "reason",
           "time_median_ms", "time_p20_ms", "time_p80_ms", "flops", "tflops", "verified_heads"]
P = 0.1
# time(p = 0.1) / time(p = 0) of each variant at N = 1024 and N = 4096, written into the run
SLOWDOWN = {"flash2": {1024: 1.25, 4096: 1.5}, "torch-flash": {1024: 1.5, 4096: 1.375},
            "torch-efficient": {1024: 1.125, 4096: 1.0625}}
PEERS = ("torch-cudnn", "torch-efficient", "torch-flash")
CUDNN_REASON = "No available kernel. Aborting execution. (cuDNN dropout probability resolution is limited to 1/16.)"
FAILED = ("bwd", "1", 4096)  # the flash2 row at p = 0.1 that failed verification


def base_time(pass_, causal, n):
    return (1.0 if pass_ == "fwd" else 2.5) * n / 1024 * (0.5 if causal == "1" else 1.0)


def row(variant, pass_, causal, n, p, time_ms, status="ok", reason=""):
    batch, heads = 16384 // n, 32
    key = (f"variant={variant}|pass={pass_}|dtype=bf16|dist=normal|B={batch}|H={heads}|Hkv={heads}|Nq={n}|Nk={n}|"
           f"d=64|dv=64|causal={causal}|window=-1,-1|scale=default")
    if p > 0:
        key += f"|dropout={p:g}|dropout_seed=1"
    peer = variant.startswith("torch-")
    flops = 4 * batch * heads * n * n * 64 * (0.5 if causal == "1" else 1.0) * (1.0 if pass_ == "fwd" else 2.5)
    values = dict(key=key, suite="dropout", run_id="r", variant=variant, dtype="bf16", distribution="normal",
                  seed="0", batch=batch, heads=heads, heads_kv=heads, seqlen_q=n, seqlen_k=n, head_dim=64,
                  head_dim_v=64, causal=causal, window_left=-1, window_right=-1, softmax_scale=0.125, varlen=0,
                  materializes=0, device="cuda", dropout=f"{p:g}", dropout_seed="" if peer else "1", status=status,
                  reason=reason, flops=flops)
    values["pass"] = pass_
    if status == "ok":
        values.update(time_median_ms=time_ms, time_p20_ms=time_ms * 0.99, time_p80_ms=time_ms * 1.01,
                      tflops=flops / (time_ms * 1e-3) / 1e12,
                      verified_heads="none: dropout 0.1 draws PyTorch's own mask" if peer and p > 0 else "all")
    return values


def problems():
    return [(pass_, causal, n) for pass_ in ("fwd", "bwd") for causal in ("0", "1") for n in (1024, 4096)]


def time_with_dropout(variant, problem):
    return base_time(*problem) * SLOWDOWN[variant][problem[2]]


def expected_ratio(variant, problem):
    """time(p) / time(0) of the two times written; None where the p = 0.1 row is not ok."""
    if variant == "torch-cudnn" or (variant == "flash2" and problem == FAILED):
        return None
    return time_with_dropout(variant, problem) / base_time(*problem)


def expected_cell(variant, problem):
    """What the table must show for a (variant, problem): the ratio, or the status of the row that is not ok."""
    ratio = expected_ratio(variant, problem)
    if ratio is None:
        return "unsupported" if variant == "torch-cudnn" else "error"
    return f"{ratio:.2f}"


def write_run(folder):
    results, peers = [], []
    for pass_, causal, n in problems():
        t0 = base_time(pass_, causal, n)
        results.append(row("flash2", pass_, causal, n, 0.0, t0))
        if (pass_, causal, n) == FAILED:
            results.append(row("flash2", pass_, causal, n, P, None, status="error", reason="verification failed"))
        else:
            results.append(row("flash2", pass_, causal, n, P, time_with_dropout("flash2", (pass_, causal, n))))
        for variant in PEERS:
            peers.append(row(variant, pass_, causal, n, 0.0, t0))
            if variant == "torch-cudnn":
                peers.append(row(variant, pass_, causal, n, P, None, status="unsupported", reason=CUDNN_REASON))
            else:
                peers.append(row(variant, pass_, causal, n, P, time_with_dropout(variant, (pass_, causal, n))))
    results.append(row("flash2", "fwd", "0", 16384, P, 20.0))  # no twin at p = 0
    for name, rows in (("results.csv", results), ("peers.csv", peers)):
        with open(os.path.join(folder, name), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def load(folder):
    results = data.load_results(os.path.join(folder, "results.csv"))
    results.rows += data.load_results(os.path.join(folder, "peers.csv")).rows
    return results


class DropoutCost(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.run = self.tmp.name
        write_run(self.run)
        self.results = load(self.run)

    def tearDown(self):
        self.tmp.cleanup()

    def test_every_row_with_dropout_finds_its_twin(self):
        found = dropout.costs(self.results)
        self.assertEqual(len(found), len(problems()) * 4 + 1)
        self.assertEqual([c.row["seqlen_q"] for c in found if c.twin is None], [16384])
        for c in found:
            if c.twin is not None:
                self.assertEqual((c.twin["variant"], c.twin["pass"], c.twin["causal"], c.twin["seqlen_q"],
                                  c.twin["dropout"]),
                                 (c.row["variant"], c.row["pass"], c.row["causal"], c.row["seqlen_q"], 0.0))
                self.assertEqual(c.p, P)

    def test_the_table_puts_the_variants_side_by_side(self):
        items = dropout.tables(dropout.costs(self.results))
        tables = [item for item in items if isinstance(item, Table)]
        self.assertEqual(len(tables), 1)
        table = tables[0]
        variants = ["flash2", *PEERS]
        self.assertEqual(list(table.header), ["pass", "d", "causal", "N"] + [Code(v) for v in variants])
        self.assertEqual(table.name, "dropout_cost_bf16_p0.1")
        lonely = ("fwd", "0", 16384)
        order = sorted(problems() + [lonely], key=lambda q: (q[0] != "fwd", q[1], q[2]))  # fwd first, then by N
        body = table.rows[:-1]
        self.assertEqual(len(body), len(order))
        for cells, problem in zip(body, order):
            pass_, causal, n = problem
            with self.subTest(problem=problem):
                self.assertEqual(cells[:4], [pass_, "64", causal, str(n)])
                self.assertEqual(cells[4:], [None] * 4 if problem == lonely else
                                 [expected_cell(v, problem) for v in variants])
        medians = table.rows[-1]
        self.assertEqual(medians[0], Strong("median"))
        for v, cell in zip(variants, medians[4:]):
            ratios = [expected_ratio(v, problem) for problem in problems() if expected_ratio(v, problem)]
            self.assertEqual(cell, Strong(f"{statistics.median(ratios):.2f}") if ratios else None)
        self.assertIn("1 row at p = 0.1 has no twin at p = 0", table.caption)

    def test_report_has_the_section_the_latex_table_and_the_csv(self):
        out = os.path.join(self.run, "report")
        make_report(self.run, out)
        with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
            report = f.read()
        self.assertIn("## Cost of dropout", report)
        self.assertIn("| fwd | 64 | 0 | 1024 | 1.25 | unsupported | 1.12 | 1.50 |", report)
        self.assertIn("| bwd | 64 | 1 | 4096 | error | unsupported | 1.06 | 1.38 |", report)
        self.assertIn("| **median** |  |  |  | **1.25** | – | **1.09** | **1.44** |", report)
        self.assertIn("LaTeX: [tables/dropout_cost_bf16_p0_1.tex](tables/dropout_cost_bf16_p0_1.tex)", report)
        with open(os.path.join(out, "tables", "dropout_cost_bf16_p0_1.tex"), encoding="utf-8") as f:
            self.assertIn(r"\texttt{torch-efficient}", f.read())
        with open(os.path.join(out, dropout.CSV_FILE), newline="") as f:
            lines = list(csv.DictReader(f))
        self.assertEqual(len(lines), len(problems()) * 4 + 1)
        by = {(r["variant"], r["pass"], r["causal"], r["seqlen_q"]): r for r in lines}
        line = by[("torch-flash", "bwd", "1", "1024")]
        t0 = base_time("bwd", "1", 1024)
        t1 = time_with_dropout("torch-flash", ("bwd", "1", 1024))
        self.assertEqual((float(line["time_median_ms_p0"]), float(line["time_median_ms"])), (t0, t1))
        self.assertEqual(float(line["ratio"]), t1 / t0)
        self.assertEqual((line["dropout"], line["status"], line["status_p0"]), ("0.1", "ok", "ok"))
        cudnn = by[("torch-cudnn", "fwd", "0", "4096")]
        self.assertEqual((cudnn["status"], cudnn["status_p0"], cudnn["ratio"], cudnn["time_median_ms"]),
                         ("unsupported", "ok", "", ""))
        lonely = by[("flash2", "fwd", "0", "16384")]
        self.assertEqual((lonely["status_p0"], lonely["ratio"]), ("", ""))

    def test_speed_panels_split_by_dropout(self):
        with style.fixed_style():
            drawn = figures.speed(self.results, figures.Context.of(self.results, None))
        titles = {ax.get_title() for ax in drawn.figure.axes if ax.get_title()}
        for title in ("forward, d=64, non-causal, dropout=0", "forward, d=64, non-causal, dropout=0.1",
                      "backward, d=64, causal, dropout=0.1"):
            self.assertIn(title, titles)
        self.assertEqual(drawn.notes, [])  # p = 0 and p = 0.1 at one N are not merged

    def test_a_peer_row_without_the_dropout_column_reads_it_from_its_key(self):
        self.assertEqual(dropout.dropout_of({"key": "variant=torch-flash|pass=fwd|scale=default|dropout=0.1|"
                                                    "dropout_seed=1"}), 0.1)
        self.assertEqual(dropout.dropout_of({"key": "variant=torch-flash|pass=fwd|scale=default"}), 0.0)
        self.assertEqual(dropout.twin_key("variant=flash2|d=64|scale=default|dropout=0.1|dropout_seed=1|cu_q=0,5"),
                         "variant=flash2|d=64|scale=default|cu_q=0,5")


class WithoutDropout(unittest.TestCase):
    def test_no_section_and_an_old_csv_removed(self):
        with tempfile.TemporaryDirectory() as tmp:
            run = os.path.join(tmp, "run")
            shutil.copytree(RUN_FIXTURE, run)
            out = os.path.join(tmp, "out")
            os.makedirs(out)
            Path(out, dropout.CSV_FILE).write_text("left by an earlier report\n")
            make_report(run, out)
            self.assertNotIn("Cost of dropout", Path(out, "report.md").read_text(encoding="utf-8"))
            self.assertFalse(os.path.exists(os.path.join(out, dropout.CSV_FILE)))


if __name__ == "__main__":
    unittest.main()
