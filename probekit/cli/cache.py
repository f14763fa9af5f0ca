"""`probekit cache`: look at, check and clear the capture cache (``$PROBEKIT_CACHE/capture``).

    probekit cache info            # entries (key, model, sentences, size, created, status), total, root
    probekit cache verify          # sizes + checksums of every entry; evicts bad ones; exit 1 if any
    probekit cache clear [--stale] # every entry and stale temp folder; --stale: only stale temp folders

The format and the checks are described in ``docs/methods/capture.md``.
"""

from __future__ import annotations

from pathlib import Path

from probekit.errors import ProbekitError


def register(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="inspect, verify or clear the capture cache",
        description="Inspect, verify or clear the capture cache ($PROBEKIT_CACHE/capture). "
        "Exit status: 0 ok; 1 `verify` found bad entries; 2 error.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser(
        "info",
        help="list the entries, their sizes and the cache root",
        description="List every entry (sizes checked, not checksums), the total size, "
        "temporary folders and the cache root.",
    )
    verify = actions.add_parser(
        "verify",
        help="check sizes and checksums of every entry; evict bad ones",
        description="Check every entry's file sizes and checksums. Bad entries are "
        "evicted (the next capture recomputes them) unless --keep. "
        "Exit status 0 if all are good, 1 if any was bad.",
    )
    verify.add_argument("--keep", action="store_true", help="report bad entries without evicting them")
    clear = actions.add_parser(
        "clear",
        help="remove every entry (or, with --stale, stale temp folders)",
        description="Remove every cache entry and every stale temporary folder. "
        "Temporary folders of captures still running are kept.",
    )
    clear.add_argument(
        "--stale", action="store_true", help="remove only the temporary folders of killed captures"
    )
    for q in (info, verify, clear):
        q.add_argument("--cache-dir", default=None, help="cache root (default: $PROBEKIT_CACHE/capture)")
        q.set_defaults(func=run)


def run(args) -> int:
    root = _root(args.cache_dir)
    return {"info": info, "verify": verify, "clear": clear}[args.action](root, args)


def _root(cache_dir: str | None) -> Path:
    from probekit.activations.cache import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise ProbekitError(
            f"the cache root {root} is not a folder",
            where="--cache-dir or $PROBEKIT_CACHE",
            fix="point --cache-dir (or $PROBEKIT_CACHE) at a folder",
        )
    return root


def info(root: Path, args) -> int:
    from probekit.activations.cache import cache_entries, temp_folders

    entries, temps = cache_entries(root), temp_folders(root)
    print(f"cache root: {root}")
    if entries:
        rows = [("key", "model", "sentences", "size", "created", "status")] + [
            (
                e.key,
                e.model,
                str(e.n_sentences),
                _size(e.size_bytes),
                e.created.strftime("%Y-%m-%d %H:%M:%S"),
                e.status,
            )
            for e in entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    total = sum(e.size_bytes for e in entries)
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_size(total)}")
    if temps:
        n_stale = sum(stale for _, stale in temps)
        print(
            f"{len(temps)} temporary folder(s) ({_size(sum(_folder_size(p) for p, _ in temps))}), "
            f"{n_stale} stale" + (": `probekit cache clear --stale` removes them" if n_stale else "")
        )
    return 0


def verify(root: Path, args) -> int:
    from probekit.activations.cache import cache_entries, check_entry, evict

    entries = cache_entries(root)
    bad = 0
    for e in entries:
        problem = check_entry(e.path)
        if problem is None:
            print(f"ok   {e.key}  {e.model}  {e.n_sentences} sentences")
            continue
        bad += 1
        if not args.keep:
            evict(e.path)
        print(f"BAD  {e.key}  {e.model}: {problem}" + ("" if args.keep else " -> evicted"))
    print(
        f"{len(entries) - bad} of {len(entries)} entries good in {root}"
        + (
            f"; {bad} bad" + (" (kept)" if args.keep else " evicted; the next capture recomputes them")
            if bad
            else ""
        )
    )
    return 1 if bad else 0


def clear(root: Path, args) -> int:
    from probekit.activations.cache import cache_entries, evict, remove_stale_temp, temp_folders

    entries = [] if args.stale else cache_entries(root)
    size = sum(e.size_bytes for e in entries)
    for e in entries:
        evict(e.path)
    stale = remove_stale_temp(root)
    live = [p for p, _ in temp_folders(root)]
    what = f"{len(stale)} stale temporary folder(s)"
    if not args.stale:
        what = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({_size(size)}) and {what}"
    print(f"removed {what} from {root}" + (f"; kept {len(live)} of captures still running" if live else ""))
    return 0


def _folder_size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError:  # removed while we looked (its capture finished)
        return 0


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"
