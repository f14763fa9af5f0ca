"""Atomic, deterministic tables (CSV, Markdown, LaTeX), and reading a run folder's tables back.

Every file is written to a temporary name in the same folder and renamed into place, so a killed run
never leaves a half-written table. CSVs use a fixed float format so the same numbers give the same bytes.
`read_table` and `stage_tables` read a stage's CSVs back, checking the columns that
`probekit.report.schema` lists for them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pandas as pd

from probekit.errors import ProbekitError
from probekit.report.schema import TableSchema

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


# --------------------------------------------------------------------------------------------------
# reading a run folder's tables back


def read_table(path: str | os.PathLike, schema: TableSchema) -> pd.DataFrame:
    """Read a stage's CSV and check that it has the columns ``schema`` lists.

    Parameters
    ----------
    path
        The CSV file.
    schema
        Its `probekit.report.schema.TableSchema` (e.g. ``schema.CHECK_ATTENTION``).

    Returns
    -------
    pandas.DataFrame
        The table as ``pandas.read_csv`` reads it.

    Raises
    ------
    ProbekitError
        If the file does not exist, or lacks a column of ``schema.columns`` (naming the file, the
        column and the stage to rerun).

    Examples
    --------
    >>> import tempfile
    >>> from probekit.report.schema import SPECIALISTS
    >>> path = Path(tempfile.mkdtemp()) / "specialists.csv"
    >>> _ = write_table(pd.DataFrame({"layer": [1], "head": [3]}), path)
    >>> read_table(path, SPECIALISTS).shape
    (1, 2)
    >>> _ = write_table(pd.DataFrame({"layer": [1], "h": [3]}), path)
    >>> read_table(path, SPECIALISTS)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    probekit.errors.ProbekitError: specialists.csv lacks the column 'head' ...
    """
    path = Path(path)
    if not path.exists():
        raise ProbekitError(
            f"no table {path.name}",
            where=str(path),
            fix=f"it is written by {schema.writer or 'its stage'}: run that first",
        )
    return check_columns(pd.read_csv(path), path, schema)


def check_columns(
    frame: pd.DataFrame, path: str | os.PathLike, schema: TableSchema, columns: tuple[str, ...] | None = None
) -> pd.DataFrame:
    """Raise `ProbekitError` unless ``frame`` (read from ``path``) has ``columns`` (default: the
    schema's required columns; pass some of ``schema.optional`` where a rule needs them); return it.

    Examples
    --------
    >>> from probekit.report.schema import SPECIALISTS
    >>> check_columns(pd.DataFrame({"layer": [1], "head": [3]}), "specialists.csv", SPECIALISTS).shape
    (1, 2)
    """
    missing = schema.missing(frame.columns, columns)
    if missing:
        path = Path(path)
        names = ", ".join(repr(c) for c in missing)
        raise ProbekitError(
            f"{path.name} lacks the column{'s' if len(missing) > 1 else ''} {names} that probekit reads "
            f"from it (it has: {', '.join(map(str, frame.columns))})",
            where=str(path),
            fix=f"the file was written by another probekit version or edited by hand; delete {path.parent} "
            f"and rerun {schema.writer or 'the stage that writes it'}, or restore the column "
            f"(probekit.report.schema lists the columns read from {schema.pattern})",
        )
    return frame


def stage_folders(run_dir: str | os.PathLike, stage: str) -> list[Path]:
    """The per-model folders of a stage (``<run_dir>/<stage>/*/``), sorted; none if the stage did not run.

    Examples
    --------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "heads" / "tiny-bert__svo").mkdir(parents=True)
    >>> [p.name for p in stage_folders(run, "heads")], stage_folders(run, "probes")
    (['tiny-bert__svo'], [])
    """
    root = Path(run_dir) / stage
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def stage_tables(
    run_dir: str | os.PathLike, *schemas: TableSchema
) -> Iterator[tuple[Path, list[pd.DataFrame]]]:
    """For each folder of the schemas' stage that holds all their files: the folder and the tables
    (`read_table`, in the order of ``schemas``). Folders lacking one of the files are skipped.

    Examples
    --------
    >>> import tempfile
    >>> from probekit.report.schema import SPECIALISTS
    >>> run = Path(tempfile.mkdtemp())
    >>> _ = write_table(pd.DataFrame({"layer": [1], "head": [3]}), run / "ablate" / "m" / "specialists.csv")
    >>> [(folder.name, len(chosen)) for folder, (chosen,) in stage_tables(run, SPECIALISTS)]
    [('m', 1)]
    """
    stages = {s.stage for s in schemas}
    if len(stages) != 1 or None in stages:
        raise ValueError(f"stage_tables needs schemas of one stage, got {sorted(map(str, stages))}")
    for folder in stage_folders(run_dir, cast(str, stages.pop())):  # None excluded above
        paths = [folder / s.file for s in schemas]
        if all(p.exists() for p in paths):
            yield folder, [read_table(p, s) for p, s in zip(paths, schemas, strict=True)]
