"""flashlab reports: figures (PNG + SVG) and a report page (report.md) from a run's results.csv and run.json.

Usage: python3 -m reports RESULTS_DIR [--out DIR]. Reads files only; see reports/README.md.
"""

from .cli import main, make_report

__all__ = ["main", "make_report"]
