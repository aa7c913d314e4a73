"""The tables of report.md, each rendered from one description (Table) both to Markdown, in report.md, and to a
LaTeX booktabs table, tables/NAME.tex beside report.md, so the two cannot drift apart.

A cell is text (str), a number (int as written; float in scientific notation, 3.2e-4 / $3.2\\times10^{-4}$),
None (not measured: '–'), a name in code type (Code), bold (Strong), or a tuple of cells written one after the
other.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

TABLES_DIR = "tables"
MISSING = "–"


@dataclass(frozen=True)
class Code:
    """A name (variant, value from the file) in code type."""

    text: str


@dataclass(frozen=True)
class Strong:
    """A bold cell (a total)."""

    value: Any


@dataclass
class Table:
    name: str                      # the file tables/NAME.tex; letters, digits, '_' and '-' (others become '_')
    header: Sequence[Any]
    rows: Sequence[Sequence[Any]]
    align: str = ""                # 'l' or 'r' per column; default all 'l'
    caption: str = ""              # the LaTeX caption (report.md says it in its own words around the table)


# --- cells -----------------------------------------------------------------------------------------------

def cell(value: Any) -> str:
    """Markdown text with the characters that would break a table escaped."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def code(value: Any) -> str:
    """Markdown code span of a value."""
    text = cell(value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if text else ""


def sci(value: float) -> str:
    """Two significant digits in scientific notation, as FlashAttention-3's Table 3: 3.2e-4, 1.9e0, -5.0e-6."""
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


_SCI = re.compile(r"(-?[0-9.]+)e(-?[0-9]+)")
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
                  "–": "--", "—": "---", "×": r"$\times$", "∞": r"$\infty$", "≤": r"$\leq$", "≥": r"$\geq$",
                  "≠": r"$\neq$", "λ": r"$\lambda$", "\n": " ", "\r": " "}


def latex_text(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def markdown_cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, tuple):
        return "".join(markdown_cell(v) for v in value)
    if isinstance(value, Code):
        return code(value.text)
    if isinstance(value, Strong):
        return f"**{markdown_cell(value.value)}**"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return sci(value)
    return cell(value)


def latex_cell(value: Any) -> str:
    if value is None:
        return latex_text(MISSING)
    if isinstance(value, tuple):
        return "".join(latex_cell(v) for v in value)
    if isinstance(value, Code):
        return r"\texttt{" + latex_text(value.text) + "}"
    if isinstance(value, Strong):
        return r"\textbf{" + latex_cell(value.value) + "}"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = sci(value)
        match = _SCI.fullmatch(text)
        if match:
            return rf"${match.group(1)}\times10^{{{match.group(2)}}}$"
        return latex_text(text)
    return latex_text(value)


# --- tables ----------------------------------------------------------------------------------------------

def markdown(table: Table) -> List[str]:
    """The Markdown table lines."""
    align = table.align or "l" * len(table.header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(markdown_cell(h) for h in table.header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def latex(table: Table) -> str:
    """The LaTeX table (booktabs: \\toprule, \\midrule, \\bottomrule), one file's text."""
    align = table.align or "l" * len(table.header)
    lines = [f"% {table.name}: written by python3 -m reports, the same numbers as report.md. Needs booktabs.",
             r"\begin{table}[ht]", r"\centering"]
    if table.caption:
        lines.append(r"\caption{" + latex_text(table.caption) + "}")
    lines += [r"\label{tab:" + table.name + "}", r"\begin{tabular}{" + align + "}", r"\toprule",
              " & ".join(latex_cell(h) for h in table.header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "table"


class Tables:
    """The tables of one report: render() gives a table's report.md lines (the table and a link to its .tex
    file) and keeps its LaTeX; save() writes the .tex files and removes those an earlier report left."""

    def __init__(self) -> None:
        self.files: Dict[str, str] = {}  # file name -> LaTeX text, in the order rendered

    def render(self, table: Table) -> List[str]:
        base = file_name(table.name)
        name, k = base, 2
        while f"{name}.tex" in self.files:  # two tables of one name (distributions that differ by a '_')
            name, k = f"{base}-{k}", k + 1
        table.name = name
        self.files[f"{name}.tex"] = latex(table)
        return markdown(table) + ["", f"LaTeX: [{TABLES_DIR}/{name}.tex]({TABLES_DIR}/{name}.tex)"]

    def save(self, out_dir: str) -> None:
        folder = os.path.join(out_dir, TABLES_DIR)
        os.makedirs(folder, exist_ok=True)
        for stale in sorted(os.listdir(folder)):
            if stale.endswith(".tex") and stale not in self.files and os.path.isfile(os.path.join(folder, stale)):
                os.remove(os.path.join(folder, stale))
        for name, text in self.files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
