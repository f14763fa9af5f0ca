"""Rerun every committed results folder's command and diff what it writes byte for byte.

    python scripts/verify_results.py [FOLDER ...]      # default: every folder under results/
    python scripts/verify_results.py --rerun-dir DIR results/seed_claims
    make verify-results

For each ``results/<name>/manifest.json`` the recorded command (``probekit run CONFIG``) runs again
into a temporary folder (or, with ``--rerun-dir DIR``, the folder ``DIR/<name>`` written earlier, e.g.
by a clone on another machine, is taken as the rerun); every file the manifest lists must come back with
the same bytes. Folders written by ``make bench`` hold timings, which no rerun reproduces: they are
listed, not rerun. A folder without a manifest must carry a ``STALE`` note, which is printed.

A file that differs is then compared number by number (`compare_text`): its text with every number
taken out must be identical, and each number pair is judged by ``|a - b| <= atol + rtol * max(|a|, |b|)``.
The report names the worst pair (file, line, CSV column) so that rounding-level drift (float kernels
differ between CPU models: MKL and torch pick other code paths on other processors, which moves the
last digits of sums) reads apart from a real change. Exit status 1 if any file differs (or, with
``--tolerant``, differs beyond the tolerance) or any rerun fails.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import math
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from probekit.report import provenance

RESULTS = provenance.REPO / "results"
#: a number as the writers print it (``%g``, ``0.5``, ``1e-07``, ``nan``, ``inf``); a hyphen between
#: letters and digits (``smollm2-135m``) is read as a sign, identically on both sides, so it compares equal
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|\bnan\b|\binf\b"
#: a run of base64 (the HTML report's and explorer's attention weights: uint8, weight = byte / 255)
BASE64 = r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{32,}={0,2}(?![A-Za-z0-9+/=])"
TOKEN = re.compile(f"({BASE64})|({NUMBER})", re.IGNORECASE)
#: files compared number by number; any other file that differs (PNG) is reported as a binary difference
TEXT_SUFFIXES = (".csv", ".md", ".tex", ".html", ".json", ".txt")


@dataclass
class Worst:
    """The number pair furthest beyond the tolerance (or, if all are within, the largest difference)."""

    excess: float  # |a - b| - (atol + rtol * max(|a|, |b|) + last printed digit); > 0: beyond tolerance
    old: str
    new: str
    where: str  # "line 76, column p" or "line 3"


@dataclass
class Comparison:
    """How two versions of a text file differ: its words, and its numbers within/beyond tolerance."""

    same_text: bool = True  # identical once every number is taken out
    text_where: str = ""  # the first line whose words differ
    n_numbers: int = 0
    n_changed: int = 0
    n_beyond: int = 0
    max_abs: float = 0.0
    worst: Worst | None = None

    @property
    def within(self) -> bool:
        return self.same_text and self.n_beyond == 0

    def describe(self) -> str:
        if not self.same_text:
            return f"words differ ({self.text_where})"
        w = self.worst
        head = f"{self.n_changed} of {self.n_numbers} numbers differ, max |diff| {self.max_abs:.3g}"
        if self.n_beyond == 0 or w is None:
            return f"{head}, all within tolerance"
        return f"{head}; {self.n_beyond} beyond tolerance, worst at {w.where}: {w.old} -> {w.new}"


def _cells(text: str, is_csv: bool) -> list[tuple[str, str]]:
    """``(where, text)`` units to compare: CSV cells (named by line and column) or lines."""
    if not is_csv:
        return [(f"line {i}", line) for i, line in enumerate(text.splitlines(), 1)]
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0] if rows else []
    out = []
    for i, row in enumerate(rows, 1):
        for j, cell in enumerate(row):
            column = header[j] if j < len(header) and i > 1 else f"#{j}"
            out.append((f"line {i}, column {column}", cell))
        out.append((f"line {i}", "," * len(row)))  # a changed row length is a change of words
    return out


def last_place(token: str) -> float:
    """One unit in the last printed digit of a number: the most its printing may have rounded away
    (twice half a unit, one on each side), e.g. ``0.00332`` -> 1e-05, ``1.5e-07`` -> 1e-08. An integer
    (no point, no exponent) is exact: 0. ``%g`` drops trailing zeros, so ``0.5`` may stand for 0.500000;
    `_pairs` therefore takes the finer of the two numbers' last places.

    Examples
    --------
    >>> last_place("0.00332"), last_place("1.5e-07"), last_place("-2E3"), last_place("100")
    (1e-05, 1e-08, 1000.0, 0.0)
    """
    mantissa, _, exponent = token.lower().partition("e")
    if "." not in mantissa and not exponent:
        return 0.0
    decimals = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def _tokens(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The words of ``text`` (what lies between the tokens) and its tokens as ``(kind, token)``."""
    words, tokens, pos = [], [], 0
    for m in TOKEN.finditer(text):
        words.append(text[pos : m.start()])
        tokens.append(("base64" if m.group(1) else "number", m.group(0)))
        pos = m.end()
    words.append(text[pos:])
    return words, tokens


def _pairs(kind: str, x: str, y: str) -> list[tuple[float, float, float]] | None:
    """``(a, b, allowed rounding)`` for each changed value of two tokens; None if they cannot pair up.

    A base64 run is read as uint8 weights (``byte / 255``, the HTML report's encoding): one level apart
    is rounding at the stored precision."""
    if kind == "number":
        return [(float(x), float(y), min(last_place(x), last_place(y)))]
    try:
        a, b = base64.b64decode(x, validate=True), base64.b64decode(y, validate=True)
    except ValueError:
        return None
    if len(a) != len(b):
        return None
    return [(p / 255, q / 255, 1 / 255) for p, q in zip(a, b, strict=True) if p != q]


def compare_text(old: str, new: str, *, rtol: float, atol: float, is_csv: bool = False) -> Comparison:
    """Compare two versions of a text file number by number.

    The words (everything but the numbers) must be identical, unit by unit (CSV cell or line); each
    pair of numbers in the same place passes if ``|a - b| <= atol + rtol * max(|a|, |b|)``, plus one
    unit in the last printed digit of the finer of the two (`last_place`: 0.00332 vs 0.00331 may be
    0.003315 printed twice; integers are exact);
    two NaNs are equal. Runs of base64 (the HTML report's uint8 attention weights) are decoded and
    compared weight by weight, one level (1/255) being the printed precision.

    Examples
    --------
    >>> old, new = "a,p\\nx,0.81\\ny,1e-07\\n", "a,p\\nx,0.46\\ny,2e-07\\n"
    >>> c = compare_text(old, new, rtol=1e-4, atol=1e-6, is_csv=True)
    >>> c.same_text, c.n_changed, c.n_beyond, c.worst.where
    (True, 2, 1, 'line 2, column p')
    >>> compare_text("best head 3.1", "best head 3.10001", rtol=1e-4, atol=0).within
    True
    >>> compare_text("mean -0.00332", "mean -0.00331", rtol=0, atol=0).within
    True
    >>> compare_text("supported", "not supported", rtol=1, atol=1).describe()
    "words differ (line 1: 'supported' vs 'not supported')"
    """
    result = Comparison()
    a_units, b_units = _cells(old, is_csv), _cells(new, is_csv)
    if len(a_units) != len(b_units):
        result.same_text = False
        result.text_where = f"{len(a_units)} vs {len(b_units)} {'cells' if is_csv else 'lines'}"
        return result
    for (where, a), (_, b) in zip(a_units, b_units, strict=True):
        if a == b:
            result.n_numbers += len(TOKEN.findall(a))
            continue
        (a_words, a_tokens), (b_words, b_tokens) = _tokens(a), _tokens(b)
        if a_words != b_words or [k for k, _ in a_tokens] != [k for k, _ in b_tokens]:
            result.same_text = False
            result.text_where = f"{where}: {_snippet(a_words, b_words)}"
            return result
        for (kind, x), (_, y) in zip(a_tokens, b_tokens, strict=True):
            result.n_numbers += 1
            if x == y:
                continue
            pairs = _pairs(kind, x, y)
            if pairs is None:
                result.same_text = False
                result.text_where = f"{where}: base64 data of different lengths"
                return result
            for fx, fy, rounding in pairs:
                if math.isnan(fx) and math.isnan(fy):
                    continue
                result.n_changed += 1
                diff = abs(fx - fy) if math.isfinite(fx) and math.isfinite(fy) else math.inf
                result.max_abs = max(result.max_abs, diff)
                excess = diff - (atol + rtol * max(abs(fx), abs(fy)) + rounding * (1 + 1e-9))
                if excess > 0:
                    result.n_beyond += 1
                if result.worst is None or excess > result.worst.excess:
                    shown = (x, y) if kind == "number" else (f"{fx:.4f} (base64)", f"{fy:.4f} (base64)")
                    result.worst = Worst(excess, *shown, where)
    return result


def _snippet(a_words: list[str], b_words: list[str]) -> str:
    """The first differing words of two units, shortened."""
    for x, y in zip(a_words, b_words, strict=False):
        if x != y:
            return f"{x[:60]!r} vs {y[:60]!r}"
    return f"{len(a_words) - 1} vs {len(b_words) - 1} numbers"


def compare_file(old: Path, new: Path, *, rtol: float, atol: float) -> Comparison | None:
    """`compare_text` for a text result file; None for a binary one (a figure)."""
    if old.suffix not in TEXT_SUFFIXES:
        return None
    return compare_text(
        old.read_text(encoding="utf-8"),
        new.read_text(encoding="utf-8"),
        rtol=rtol,
        atol=atol,
        is_csv=old.suffix == ".csv",
    )


def machine() -> str:
    """This machine's CPU model and the code path torch picked for it (results are byte-identical only
    where both match the machine that wrote them)."""
    cpu = provenance.cpu_model() or "unknown CPU"
    return f"{cpu}, torch CPU capability {provenance.torch_cpu_capability()}"


def verify(folder: Path, scratch: Path, args: argparse.Namespace) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.exists():
        print(
            f"{folder.name}: not rerun (no manifest); "
            f"STALE: {provenance.stale_reason(folder) or '(no note!)'}"
        )
        return bool(provenance.stale_reason(folder))
    prov = json.loads(manifest.read_text())["provenance"]
    words = shlex.split(prov["command"])
    if words[:2] != ["probekit", "run"]:
        print(
            f"{folder.name}: not rerun ({prov['command']!r} measures time; its numbers are not reproducible)"
        )
        return True
    if args.rerun_dir is not None:
        out = Path(args.rerun_dir).resolve() / folder.name
        print(f"{folder.name}: comparing with {out} (not rerun)", flush=True)
        if not out.is_dir():
            print(f"{folder.name}: FAILED ({out} is not a folder)")
            return False
    else:
        out = scratch / folder.name
        cmd = [
            sys.executable,
            "-c",
            "import sys; from probekit.cli import main; sys.exit(main(sys.argv[1:]))",
            *words[1:],
            "--out",
            str(out),
        ]
        print(f"{folder.name}: {' '.join(words)} --out {out}", flush=True)
        proc = subprocess.run(cmd, cwd=provenance.REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{folder.name}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            return False
    fresh = provenance.file_hashes(out)
    differ = sorted(rel for rel, digest in prov["files"].items() if fresh.get(rel) != digest)
    extra = sorted(set(fresh) - set(prov["files"]))
    missing = [rel for rel in differ if rel not in fresh]
    beyond = list(missing) + extra
    for rel in missing:
        print(f"  missing: {rel}")
    for rel in extra:
        print(f"  new file: {rel}")
    for rel in (r for r in differ if r in fresh):
        cmp = compare_file(folder / rel, out / rel, rtol=args.rtol, atol=args.atol)
        if cmp is None:
            print(f"  differs: {rel} (binary)")
            beyond.append(rel)
            continue
        print(f"  differs: {rel}: {cmp.describe()}")
        if not cmp.within:
            beyond.append(rel)
    if not differ and not extra:
        verdict, ok = "identical", True
    elif not beyond:
        verdict = f"{len(differ)} file(s) differ, all numbers within rtol={args.rtol:g}, atol={args.atol:g}"
        ok = args.tolerant
    else:
        verdict, ok = (
            f"DIFFERENT ({len(beyond)} file(s) beyond rtol={args.rtol:g}, atol={args.atol:g})",
            False,
        )
    print(f"{folder.name}: {verdict} ({len(prov['files'])} files)", flush=True)
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", help="results folders (default: every one under results/)")
    parser.add_argument("--rerun-dir", help="take DIR/<folder name> as the rerun instead of rerunning")
    parser.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    parser.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    parser.add_argument(
        "--tolerant",
        action="store_true",
        help="pass a folder whose files differ only within the tolerance (default: bytes must match)",
    )
    args = parser.parse_args(argv)
    print(f"this machine: {machine()}")
    folders = [Path(a).resolve() for a in args.folders] or sorted(p for p in RESULTS.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="verify-results-") as scratch:
        results = [verify(folder, Path(scratch), args) for folder in folders]
    print(f"{sum(results)} of {len(results)} folders verified")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
