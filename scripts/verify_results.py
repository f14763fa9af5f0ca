"""Rerun every committed results folder's command and diff what it writes byte for byte.

    python scripts/verify_results.py [FOLDER ...]      # default: every folder under results/
    make verify-results

For each ``results/<name>/manifest.json`` the recorded command (``probekit run CONFIG``) runs again
into a temporary folder; every file the manifest lists must come back with the same bytes. Folders
written by ``make bench`` hold timings, which no rerun reproduces: they are listed, not rerun. A
folder without a manifest must carry a ``STALE`` note, which is printed. Exit status 1 if any file
differs or any rerun fails.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from probekit.report import provenance

RESULTS = provenance.REPO / "results"


def verify(folder: Path, scratch: Path) -> bool:
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
    for rel in differ:
        print(f"  differs: {rel}" if rel in fresh else f"  missing: {rel}")
    for rel in extra:
        print(f"  new file: {rel}")
    ok = not differ and not extra
    print(f"{folder.name}: {'identical' if ok else 'DIFFERENT'} ({len(prov['files'])} files)", flush=True)
    return ok


def main(argv: list[str]) -> int:
    folders = [Path(a).resolve() for a in argv] or sorted(p for p in RESULTS.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory(prefix="verify-results-") as scratch:
        results = [verify(folder, Path(scratch)) for folder in folders]
    print(f"{sum(results)} of {len(results)} folders verified")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
