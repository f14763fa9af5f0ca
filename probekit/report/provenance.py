"""Provenance of a results folder: which command wrote it, from which config and code, and a hash
of every file it wrote, so that a committed folder can be checked without rerunning anything.

A results folder's ``manifest.json`` (written by `probekit run`, and by ``make bench`` for the
benchmarks) carries a ``provenance`` record:

- ``command``: the command that regenerates the folder (``probekit run experiments/x.yaml``);
- ``config``: that config's path relative to the repository and the sha256 of its bytes;
- ``files``: ``{path relative to the folder: sha256}`` for every file the command wrote (the
  manifest itself excepted);
- ``code``: ``{path relative to the repository: fingerprint}`` for every ``probekit`` module the
  process had imported when it finished, i.e. the code that could have fed a number; the fingerprint
  (`code_fingerprint`) ignores formatting, comments, docstrings and type annotations.

`check_folder` compares a folder with its record: a file changed or added since (hand edits), a
config changed since, or code changed since (the folder is then *stale*: rerun its command, or
mark it stale with a ``STALE`` file that says why). ``make verify-results`` goes further and reruns
every command, diffing byte for byte (``scripts/verify_results.py``).
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

#: the repository root (this file is ``probekit/report/provenance.py``)
REPO = Path(__file__).resolve().parents[2]
#: files a run may leave that are not results (stage markers are git-ignored)
NOT_RESULTS = ("manifest.json", "STALE")


def cpu_model() -> str | None:
    """The processor as ``/proc/cpuinfo`` names it, with its family and model numbers
    (``"AMD EPYC (family 25, model 17)"``); None where there is no ``/proc/cpuinfo``.

    Manifests record it because the same code, packages and thread count can print different last digits
    on another CPU model (other SIMD kernels sum in another order): byte identity holds per CPU model
    (``docs/methods/experiments.md``)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():  # the first processor's block ends at its blank line
                break
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return None
    numbers = [f"{k.replace('cpu ', '')} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return fields.get("model name", "?") + (f" ({', '.join(numbers)})" if numbers else "")


def torch_cpu_capability() -> str:
    """The SIMD level torch's CPU kernels dispatch to here (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def result_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` that is a result: not the manifest, not a ``STALE`` note, not a
    hidden file (``.done`` markers, temporary files)."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in NOT_RESULTS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def file_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of `result_files`."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256(p) for p in result_files(folder)}


def code_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a Python module's syntax tree without docstrings, comments, type annotations or layout.

    Two versions of a module that differ only in what cannot change a number (formatting, comments,
    docstrings, annotations) get the same fingerprint; any other edit changes it.
    """
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        if isinstance(node, ast.arg):
            node.annotation = None
        if isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def code_hashes() -> dict[str, str]:
    """``{repository-relative path: code_fingerprint}`` of every imported ``probekit`` module."""
    package = REPO / "probekit"
    out = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(package) and Path(path).suffix == ".py":
            out[Path(path).resolve().relative_to(REPO).as_posix()] = code_fingerprint(path)
    return dict(sorted(out.items()))


def repo_relative(path: str | os.PathLike) -> str | None:
    """``path`` relative to the repository, or None when it lies outside."""
    p = Path(path).resolve()
    return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else None


def record(folder: str | os.PathLike, command: str, config: str | os.PathLike | None) -> dict:
    """The ``provenance`` record of a folder just written by ``command`` (from ``config``)."""
    cfg = None
    if config is not None:
        cfg = {"path": repo_relative(config) or Path(config).name, "sha256": sha256(config)}
    return {"command": command, "config": cfg, "files": file_hashes(folder), "code": code_hashes()}


def stale_reason(folder: str | os.PathLike) -> str:
    """The text of the folder's ``STALE`` note (why it was not regenerated), or ``""``."""
    stale = Path(folder) / "STALE"
    return stale.read_text().strip() if stale.exists() else ""


@dataclass(frozen=True)
class Problem:
    """One way a results folder differs from its manifest."""

    folder: str
    kind: str  # "missing manifest", "no provenance", "file changed", "file missing", "file added",
    #             "config changed", "config missing", "code changed"
    detail: str

    def __str__(self) -> str:
        return f"{self.folder}: {self.kind}: {self.detail}"


def check_folder(folder: str | os.PathLike, *, code: bool = True) -> list[Problem]:
    """Compare a committed results folder with its ``manifest.json`` provenance record.

    Parameters
    ----------
    folder
        A folder written by `probekit run` or ``make bench``.
    code
        Also check that the ``probekit`` modules the run imported are unchanged.

    A folder that is knowingly out of date (its code changed, or it predates provenance records)
    carries a ``STALE`` file saying why and how to regenerate it; the code check and a missing
    manifest are then not reported (hand edits to recorded files still are).

    Returns
    -------
    list of Problem
        Empty when the folder is exactly what its command wrote, from the current config and code.

    Examples
    --------
    >>> import tempfile, json
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "t.csv").write_text("a\\n1\\n")
    >>> manifest = {"provenance": record(folder, "probekit run x.yaml", None)}
    >>> _ = (folder / "manifest.json").write_text(json.dumps(manifest))
    >>> check_folder(folder)
    []
    >>> _ = (folder / "t.csv").write_text("a\\n2\\n")
    >>> [p.kind for p in check_folder(folder)]
    ['file changed']
    """
    import json

    folder = Path(folder)
    name = repo_relative(folder) or folder.name
    manifest = folder / "manifest.json"
    if not manifest.exists():
        if stale_reason(folder):
            return []
        return [Problem(name, "missing manifest", "no manifest.json: which command wrote this folder?")]
    prov = json.loads(manifest.read_text()).get("provenance")
    if not prov:
        return [Problem(name, "no provenance", "manifest.json has no provenance record: rerun its command")]
    problems = []
    recorded, present = prov["files"], file_hashes(folder)
    for rel, digest in recorded.items():
        if rel not in present:
            problems.append(Problem(name, "file missing", rel))
        elif present[rel] != digest:
            problems.append(
                Problem(name, "file changed", f"{rel} differs from what `{prov['command']}` wrote")
            )
    problems += [
        Problem(name, "file added", f"{rel} was not written by `{prov['command']}`")
        for rel in present
        if rel not in recorded
    ]
    cfg = prov.get("config")
    if cfg:
        path = REPO / cfg["path"]
        if not path.exists():
            problems.append(Problem(name, "config missing", cfg["path"]))
        elif sha256(path) != cfg["sha256"]:
            problems.append(
                Problem(name, "config changed", f"{cfg['path']} changed since; rerun `{prov['command']}`")
            )
    if code:
        changed = [
            rel
            for rel, digest in prov["code"].items()
            if not (REPO / rel).exists() or code_fingerprint(REPO / rel) != digest
        ]
        if changed and not stale_reason(folder):
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            problems.append(
                Problem(
                    name,
                    "code changed",
                    f"{shown} changed since the run; rerun `{prov['command']}` "
                    "(or write why it stays in a STALE file)",
                )
            )
    return problems
