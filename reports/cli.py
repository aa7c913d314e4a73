"""The command: python3 -m reports RESULTS_DIR [--out DIR].

RESULTS_DIR holds results.csv and run.json, and may hold peers.csv (experiments/peers/torch_sdpa.py: other
implementations measured on the same problems, in the same columns), whose rows join the figures.

report.md and its tables (tables/NAME.tex, LaTeX) are written beside the figures; for a run with dropout (rows at
p > 0 beside their twins at p = 0, experiments/dropout.toml), also dropout_cost.csv (dropout.py).

Exit status 0 when the report is written, 2 on malformed input (one line on stderr naming the file and the
problem: results.csv missing or unreadable, a required column missing, a field that does not parse, run.json
that is not a JSON object). A run.json that does not exist is not an error: the report says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import dropout, markdown
from .data import RESULTS_FILE, RUN_FILE, InputError, load_results, load_run
from .figures import Context, Outcome, render_all
from .numerics import error_tables

REPORT_FILE = "report.md"
PEERS_FILE = "peers.csv"


def make_report(results_dir: str, out_dir: Optional[str] = None) -> List[Outcome]:
    """Writes the figures and report.md of one run into out_dir (default RESULTS_DIR/report). Raises InputError."""
    if not os.path.isdir(results_dir):
        raise InputError(results_dir, "not a directory")
    results = load_results(os.path.join(results_dir, RESULTS_FILE))
    peers_path = os.path.join(results_dir, PEERS_FILE)
    if os.path.isfile(peers_path):  # peers measured on the same problems (experiments/peers/), in the same columns
        peers = load_results(peers_path)
        results.rows += peers.rows
        results.notes += [f"{PEERS_FILE}: {note}" for note in peers.notes]
    run = load_run(os.path.join(results_dir, RUN_FILE))
    out_dir = out_dir or os.path.join(results_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    outcomes = render_all(results, run, out_dir)
    costs = dropout.costs(results)  # rows at dropout p > 0 and their twins at p = 0, peers included
    sections = [("Numerical error", error_tables(results, Context.of(results, run))),
                ("Cost of dropout", dropout.tables(costs))]
    markdown.write(os.path.join(out_dir, REPORT_FILE), results, run, outcomes, sections)
    dropout.write_csv(out_dir, costs)
    return outcomes


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m reports",
        description="Figures (PNG + SVG) and report.md from a flashlab run's results.csv and run.json.")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="folder holding results.csv and run.json")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RESULTS_DIR/report)")
    args = parser.parse_args(argv)
    try:
        outcomes = make_report(args.results_dir, args.out)
    except InputError as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    out_dir = args.out or os.path.join(args.results_dir, "report")
    drawn = sum(1 for o in outcomes if not o.skipped)
    skipped = sum(1 for o in outcomes if o.skipped and o.applies)
    print(f"reports: wrote {os.path.join(out_dir, REPORT_FILE)} ({drawn} figures, {skipped} skipped)")
    return 0
