"""What experiments/peers/torch_sdpa.py measures and writes (peer_rows.py), without PyTorch or a GPU.

- Dropout: p = 0 and p > 0 of one shape are two problems (and two mask seeds at p > 0, so each flashlab row has a
  peer row of its own key); a p > 0 problem is handed to the measurement with its p, its peer row carries flashlab's
  `dropout`, an empty `dropout_seed` and flashlab's key, and is not verified (no error columns, `verified_heads`
  says why); a backend's failure with dropout keeps PyTorch's warnings that name dropout.
- p = 0 unchanged: the peers.csv of a committed H200 run (144 rows, from a results.csv without the dropout column),
  rebuilt from its results.csv and the measurements it holds, equals the committed file byte for byte; a p = 0 row of
  a file with the dropout column differs from one without it by that column alone.
"""

import csv
import io
import json
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments/peers"))
import peer_rows  # noqa: E402

RESULTS = ROOT / "experiments/results"
COLUMNS = ["key", "suite", "run_id", "row_index", "variant", "pass", "dtype", "distribution", "seed", "batch",
           "heads", "heads_kv", "seqlen_q", "seqlen_k", "head_dim", "head_dim_v", "causal", "window_left",
           "window_right", "softmax_scale", "varlen", "materializes", "device", "dropout", "dropout_seed", "status",
           "reason", "warmup", "time_samples", "time_median_ms", "time_p20_ms", "time_p80_ms", "time_min_ms",
           "time_spread", "flops", "tflops", "workspace_peak_bytes", "io_bytes", "device_peak_bytes",
           "verified_heads", "err_o_max_abs", "err_o_rel_fro"]
OLD_COLUMNS = [c for c in COLUMNS if c not in ("dropout", "dropout_seed")]


def flashlab_row(variant="flash2", pass_="fwd", seqlen=1024, head_dim=64, causal=0, dropout=0.0, dropout_seed=1,
                 device="cuda", window=(-1, -1), seed=0):
    """A results.csv row as the harness writes it for experiments/dropout.toml (16k tokens, model dim 2048, bf16);
    its key names the dropout only when p > 0 (harness/src/suite.cpp RowSpec::key)."""
    batch, heads = 16384 // seqlen, 2048 // head_dim
    key = (f"variant={variant}|pass={pass_}|dtype=bf16|dist=normal|B={batch}|H={heads}|Hkv={heads}|Nq={seqlen}|"
           f"Nk={seqlen}|d={head_dim}|dv={head_dim}|causal={causal}|window={window[0]},{window[1]}|scale=default")
    if dropout > 0:
        key += f"|dropout={dropout:g}|dropout_seed={dropout_seed}"
    values = dict(key=key, suite="dropout", run_id="h200", row_index="0", variant=variant, dtype="bf16",
                  distribution="normal", seed=str(seed), batch=str(batch), heads=str(heads), heads_kv=str(heads),
                  seqlen_q=str(seqlen), seqlen_k=str(seqlen), head_dim=str(head_dim), head_dim_v=str(head_dim),
                  causal=str(causal), window_left=str(window[0]), window_right=str(window[1]),
                  softmax_scale=repr(head_dim ** -0.5), varlen="0", materializes="0", device=device,
                  dropout=f"{dropout:g}", dropout_seed=str(dropout_seed), status="ok", flops="1e12")
    values["pass"] = pass_
    return {c: values.get(c, "") for c in COLUMNS}


def without_dropout_columns(row):
    return {c: v for c, v in row.items() if c not in ("dropout", "dropout_seed")}


def written(rows, columns):
    """The bytes torch_sdpa.py writes for `rows` (its csv.DictWriter)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


class Attempts:
    """A stand-in for torch_sdpa.run_backend: records what it was asked to measure, answers from `outcomes`."""

    def __init__(self, outcomes):
        self.outcomes, self.calls = outcomes, []

    def __call__(self, backend):
        self.calls.append(backend)
        return self.outcomes[backend]


TIMES = [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 2.0]


class Problems(unittest.TestCase):
    def test_select_rows_takes_gpu_rows_of_the_variant_and_filter(self):
        rows = [flashlab_row(), flashlab_row(dropout=0.1), flashlab_row(variant="cpu-standard", device="cpu"),
                flashlab_row(variant="standard")]
        self.assertEqual(len(peer_rows.select_rows(rows)), 3)
        self.assertEqual(len(peer_rows.select_rows(rows, "flash2")), 2)
        only = peer_rows.select_rows(rows, "flash2", [("dropout", "0.1")])
        self.assertEqual([r["dropout"] for r in only], ["0.1"])

    def test_dropout_twins_are_two_problems(self):
        rows = [flashlab_row(dropout=0.0), flashlab_row(dropout=0.1),
                flashlab_row(variant="standard", dropout=0.0),  # the same problem as the first
                flashlab_row(dropout=0.1, seqlen=4096), flashlab_row(dropout=0.0, seqlen=4096)]
        problems = peer_rows.distinct_problems(rows)
        self.assertEqual([(s["seqlen_q"], peer_rows.dropout_of(s)) for s, _ in problems],
                         [("1024", 0.0), ("1024", 0.1), ("4096", 0.1), ("4096", 0.0)])
        self.assertEqual([s["variant"] for s, _ in problems], ["flash2"] * 4)

    def test_the_mask_seed_splits_problems_only_with_dropout(self):
        rows = [flashlab_row(dropout=0.1, dropout_seed=1), flashlab_row(dropout=0.1, dropout_seed=2),
                flashlab_row(dropout=0.0, dropout_seed=1), flashlab_row(dropout=0.0, dropout_seed=2)]
        problems = peer_rows.distinct_problems(rows)
        self.assertEqual([(s["dropout"], s["dropout_seed"]) for s, _ in problems],
                         [("0.1", "1"), ("0.1", "2"), ("0", "1")])

    def test_a_run_without_the_dropout_column_is_read_as_p_0(self):
        rows = [without_dropout_columns(flashlab_row(seqlen=n, pass_=pass_, seed=seed))
                for n in (1024, 4096) for pass_ in ("fwd", "bwd") for seed in (0, 0, 1)]
        problems = peer_rows.distinct_problems(rows)
        # one problem per (shape, pass, inputs seed), as the dedup keyed on (problem, inputs) alone
        expected = [(n, pass_, seed) for n in ("1024", "4096") for pass_ in ("fwd", "bwd") for seed in ("0", "1")]
        self.assertEqual([(s["seqlen_q"], s["pass"], s["seed"]) for s, _ in problems], expected)
        self.assertEqual({peer_rows.dropout_of(s) for s, _ in problems}, {0.0})

    def test_a_dropout_row_is_measured_on_torch_randn_without_a_line_on_stderr(self):
        source = flashlab_row(dropout=0.1, seqlen=1024)
        p = peer_rows.problem_of(source)
        spec, why = peer_rows.inputs_of(source, p, verify_max_n=8192)
        self.assertIsNone(spec)
        self.assertEqual(why, "dropout 0.1, not verified")
        self.assertFalse(peer_rows.warns_randn(source, p, spec, why))
        source = flashlab_row(dropout=0.0, seqlen=1024)
        self.assertEqual(peer_rows.inputs_of(source, peer_rows.problem_of(source), 8192), ((0, "normal"), None))


class Rows(unittest.TestCase):
    def rows(self, source, outcomes, backends=("flash", "efficient", "cudnn"), verify_max_n=8192, columns=COLUMNS):
        p = peer_rows.problem_of(source)
        spec, why = peer_rows.inputs_of(source, p, verify_max_n)
        attempts = Attempts(outcomes)
        rows = list(peer_rows.problem_rows(source, p, columns, backends, attempts, 3, verify_max_n, why,
                                           spec is not None))
        return rows, attempts

    def test_a_dropout_row_carries_flashlab_s_dropout_and_key_and_is_not_verified(self):
        source = flashlab_row(pass_="bwd", dropout=0.1, dropout_seed=1)
        measurement = {"times": TIMES, "workspace": 100, "io": 1000, "errors": {}}
        cudnn = peer_rows.failure_reason(
            "No available kernel. Aborting execution.", 0.1,
            ["Flash attention has been runtime disabled.",
             "cuDNN dropout probability resolution is limited to 1/16.Use a dropout probability that is a multiple "
             "of 1/16 to select the cuDNN backend"])
        rows, attempts = self.rows(source, {"flash": ("ok", measurement), "efficient": ("ok", measurement),
                                            "cudnn": ("unsupported", cudnn)})
        self.assertEqual(attempts.calls, ["flash", "efficient", "cudnn"])
        for row, backend in zip(rows, ("flash", "efficient", "cudnn")):
            with self.subTest(backend=backend):
                self.assertEqual(row["variant"], f"torch-{backend}")
                self.assertEqual(row["dropout"], "0.1")
                self.assertNotIn("dropout_seed", row)  # written empty: PyTorch's mask has no flashlab seed
                self.assertEqual(row["key"], source["key"].replace("variant=flash2", f"variant=torch-{backend}"))
                self.assertTrue(row["key"].endswith("|dropout=0.1|dropout_seed=1"))
                self.assertEqual(row["pass"], "bwd")
                self.assertFalse([c for c in row if c.startswith("err_")])
        for row in rows[:2]:
            self.assertEqual(row["status"], "ok")
            self.assertEqual(row["time_median_ms"], 1.45)
            self.assertTrue(row["verified_heads"].startswith("none: dropout 0.1 draws PyTorch's own mask"))
        self.assertEqual(rows[2]["status"], "unsupported")
        self.assertEqual(rows[2]["reason"],
                         "No available kernel. Aborting execution. (cuDNN dropout probability resolution is limited "
                         "to 1/16.Use a dropout probability that is a multiple of 1/16 to select the cuDNN backend)")
        self.assertNotIn("verified_heads", rows[2])
        line = written(rows, COLUMNS).splitlines()[1]
        self.assertIn(",0.1,,ok,", line)  # dropout 0.1, dropout_seed empty, then the status

    def test_a_problem_sdpa_cannot_express_is_unsupported_without_an_attempt(self):
        rows, attempts = self.rows(flashlab_row(dropout=0.1, window=(256, 0)), {})
        self.assertEqual(attempts.calls, [])
        self.assertEqual({r["status"] for r in rows}, {"unsupported"})
        self.assertEqual({r["reason"] for r in rows}, {"sliding windows are not supported by PyTorch SDPA"})
        self.assertEqual({r["dropout"] for r in rows}, {"0.1"})

    def test_an_oom_keeps_its_reason(self):
        rows, _ = self.rows(flashlab_row(dropout=0.1), {"math": ("oom", "CUDA out of memory.")}, backends=("math",))
        self.assertEqual((rows[0]["status"], rows[0]["reason"], rows[0]["materializes"]),
                         ("oom", "CUDA out of memory.", "1"))

    def test_a_p_0_row_differs_from_one_of_a_run_without_dropout_by_the_column_alone(self):
        measurement = {"times": TIMES, "workspace": 100, "io": 1000, "errors": {"o": (1e-3, 2e-3)}}
        source = flashlab_row(dropout=0.0)
        new, _ = self.rows(source, {"flash": ("ok", measurement)}, backends=("flash",))
        old, _ = self.rows(without_dropout_columns(source), {"flash": ("ok", measurement)}, backends=("flash",),
                           columns=OLD_COLUMNS)
        self.assertEqual(written(old, OLD_COLUMNS).splitlines()[1],
                         written(new, COLUMNS).splitlines()[1].replace(",cuda,0,,ok,", ",cuda,ok,"))
        self.assertEqual(new[0].pop("dropout"), "0")
        self.assertEqual(new, old)
        self.assertEqual(old[0]["verified_heads"], "all (vs float64 math on the same inputs)")
        self.assertEqual((old[0]["err_o_max_abs"], old[0]["err_o_rel_fro"]), (1e-3, 2e-3))

    def test_failure_reasons(self):
        said = ["cuDNN dropout  probability\nresolution is limited to 1/16.", "Memory efficient kernel not used",
                "cuDNN dropout  probability\nresolution is limited to 1/16."]
        # p = 0: the error's first line, as always, whatever PyTorch warned
        self.assertEqual(peer_rows.failure_reason("No available kernel.\nmore", 0.0, said), "No available kernel.")
        # p > 0: and the warnings that name dropout, once each, on one line
        self.assertEqual(peer_rows.failure_reason("No available kernel.\nmore", 0.1, said),
                         "No available kernel. (cuDNN dropout probability resolution is limited to 1/16.)")
        self.assertEqual(peer_rows.failure_reason("x", 0.1, ["dropout " * 100]), ("x (" + "dropout " * 100)[:300])
        self.assertEqual(peer_rows.failure_reason("x" * 400), "x" * 300)


def measurement_of(row):
    """The measurement torch_sdpa.measure returned for a committed peers.csv row of ten samples: ten times with its
    median, p20, p80 and min (peer_rows.quantile interpolates between equal neighbours exactly), its bytes and
    errors."""
    t_min, p20, median, p80 = (float(row[c]) for c in ("time_min_ms", "time_p20_ms", "time_median_ms", "time_p80_ms"))
    assert row["time_samples"] == "10"
    errors = {t: (float(row[f"err_{t}_max_abs"]), float(row[f"err_{t}_rel_fro"]))
              for t in ("o", "lse", "dq", "dk", "dv") if row.get(f"err_{t}_max_abs")}
    return {"times": [t_min, p20, p20, p20, median, median, median, p80, p80, p80],
            "workspace": int(row["workspace_peak_bytes"]), "io": int(row["io_bytes"]), "errors": errors}


class CommittedRuns(unittest.TestCase):
    """torch_sdpa.py's p = 0 output is what it was: committed peers.csv files rebuilt byte for byte from their run's
    results.csv (selection, dedup, order, identity) and the measurements they hold (the row formed from them)."""

    def rebuild(self, run, variant, backends, verify_max_n, filters=((),)):
        with open(run / "results.csv", newline="") as f:
            reader = csv.DictReader(f)
            columns, results = reader.fieldnames, list(reader)
        with open(run / "peers.csv", newline="") as f:
            committed = {r["key"]: r for r in csv.DictReader(f)}
        warmup = int(json.loads((run / "run.json").read_text()).get("warmup", 3))
        rows = []
        for terms in filters:  # a run made by several commands, one per filter, their outputs joined
            for source, p in peer_rows.distinct_problems(peer_rows.select_rows(results, variant, terms)):
                spec, why = peer_rows.inputs_of(source, p, verify_max_n)

                def attempt(backend):
                    key = "|".join([f"variant=torch-{backend}"] + source["key"].split("|")[1:])
                    return "ok", measurement_of(committed[key])

                rows += peer_rows.problem_rows(source, p, columns, backends, attempt, warmup, verify_max_n, why,
                                               spec is not None)
        return written(rows, columns)

    def assert_rebuilt(self, run, *args, **kwargs):
        expected = (run / "peers.csv").read_bytes().decode()
        got = self.rebuild(run, *args, **kwargs)
        self.assertEqual(len(got.splitlines()), len(expected.splitlines()))
        for i, (a, b) in enumerate(zip(got.splitlines(), expected.splitlines())):
            self.assertEqual(a, b, f"{run.name} line {i + 1}")
        self.assertEqual(got, expected)

    def test_speed_hopper_run(self):
        # torch_sdpa.py RUN --backends cudnn,flash --variant flash3 --verify-max-n 0 --filter ..., the outputs joined
        # (by dtype, then N); the peers.csv of the runs before (h200-2026-11-21) were written by an earlier script
        run = RESULTS / "h200-2026-11-30/speed_hopper"
        with open(run / "peers.csv", newline="") as f:
            groups = list(dict.fromkeys((r["dtype"], r["seqlen_q"]) for r in csv.DictReader(f)))
        self.assertEqual(len(groups), 12)
        self.assert_rebuilt(run, "flash3", ["cudnn", "flash"], 0,
                            filters=[[("dtype", dtype), ("seqlen_q", n)] for dtype, n in groups])

if __name__ == "__main__":
    unittest.main()
