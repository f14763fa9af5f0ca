"""Atomic, deterministic tables: CSV, Markdown and LaTeX.

Every file is written to a temporary name in the same folder and renamed into place, so a killed run
never leaves a half-written table. CSVs use a fixed float format so the same numbers give the same bytes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd

FLOAT_FORMAT = "%.6g"


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a tidy frame as CSV (atomically, deterministic float format)."""
    return atomic_write_text(path, df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n"))


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def latex_table(df: pd.DataFrame) -> str:
    """A LaTeX tabular (booktabs) for papers."""
    return df.to_latex(index=False, float_format=lambda v: format(v, ".3g"), escape=True)


def write_tables(tables: dict[str, pd.DataFrame], folder: str | os.PathLike) -> None:
    """Write each frame as ``name.csv``, ``name.md`` and ``name.tex`` in ``folder`` (atomically)."""
    folder = Path(folder)
    for name, df in tables.items():
        write_table(df, folder / f"{name}.csv")
        atomic_write_text(folder / f"{name}.md", markdown_table(df))
        atomic_write_text(folder / f"{name}.tex", latex_table(df))
