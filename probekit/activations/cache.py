"""The capture cache on disk: entry layout, checksums computed while writing, checks, eviction, cleanup.

`probekit.activations.capture.capture` writes an entry ``<root>/<key>/`` (``*.npy``, ``meta.json``,
``checksums.json``) into a temporary folder ``.<key>.tmp-<pid>@<host>-<hex>`` and renames it into place. This
module records and checks each file's size and BLAKE2b checksum (`ChunkHasher`, `write_record`,
`check_entry`), evicts bad entries (`evict`), removes the temporary folders of killed captures
(`remove_stale_temp`) and lists entries (`cache_entries`, used by ``probekit cache``). The format and the
checksum scheme are described in ``docs/methods/capture.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from probekit.errors import ProbekitError

#: On-disk format of an entry: 2 adds ``checksums.json``. Entries of another format are recomputed once.
FORMAT_VERSION = 2
META = "meta.json"
CHECKSUMS = "checksums.json"
CHUNK_DIGEST_BYTES = 16
#: Temporary folders older than this (about the process start) may be removed if their owner is gone.
STARTED = time.time()
#: This machine, as written into temporary folder names: a pid is only checked on the machine that wrote it.
HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
#: A temporary folder of another machine counts as stale after this long without a heartbeat.
FOREIGN_STALE_S = 3600.0
_KEY = re.compile(r"^[0-9a-f]{32}$")
_TEMP = re.compile(r"^\.(?P<key>[0-9a-f]{32})\.tmp-(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9_.-]+)-)?[0-9a-f]+$")


class CacheWarning(UserWarning):
    """A capture cache entry was damaged or outdated; it was evicted and is recomputed."""


def default_cache_dir() -> Path:
    """``$PROBEKIT_CACHE/capture``: where `capture` keeps its entries by default."""
    from probekit.models import cache_root

    return cache_root() / "capture"


def temp_name(key: str) -> str:
    """Name of a temporary folder for ``key``: ``.<key>.tmp-<pid>@<host>-<random>`` (its owner)."""
    return f".{key}.tmp-{os.getpid()}@{HOST}-{uuid.uuid4().hex[:8]}"


def heartbeat(folder: Path) -> None:
    """Mark a temporary folder as in use (its mtime = now); `capture` calls it after every batch, so that
    another machine sharing the cache can tell a running capture from a killed one."""
    os.utime(folder)


def sentence_offsets(n_words: np.ndarray, n_att_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    """Where each sentence starts in the stored arrays, ``[n_sentences + 1]`` int64 each: ``"words"``
    (rows of the residual arrays), ``"attention"`` and ``"special_mass"`` (elements of the flat arrays).
    The one definition of the layout, used by the writer, by `Capture` and by `check_entry`."""
    n_words = np.asarray(n_words, dtype=np.int64)

    def cum(sizes):
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    return {
        "words": cum(n_words),
        "attention": cum(n_att_layers * n_heads * n_words**2),
        "special_mass": cum(n_att_layers * n_heads * n_words),
    }


class ChunkHasher:
    """Digest of one ``.npy`` memory map, hashed sentence chunk by sentence chunk as they are written (in
    any order) and combined in file order: ``blake2b-256(header ‖ d_0 ‖ … ‖ d_{n-1})``."""

    def __init__(self, arr: np.memmap, path: Path, n_chunks: int):
        with open(path, "rb") as f:
            self.header = f.read(arr.offset)  # the .npy header open_memmap wrote
        self.digests = np.zeros((n_chunks, CHUNK_DIGEST_BYTES), dtype=np.uint8)  # [sentence, digest byte]

    def add(self, i: int, written: np.ndarray) -> None:
        """Hash sentence i's chunk: the bytes just written into the map at its place (C order)."""
        d = hashlib.blake2b(written, digest_size=CHUNK_DIGEST_BYTES).digest()  # type: ignore[arg-type]  # an ndarray is a buffer; numpy's stubs do not say so
        self.digests[i] = np.frombuffer(d, dtype=np.uint8)

    def hexdigest(self) -> str:
        return hashlib.blake2b(self.header + self.digests.tobytes(), digest_size=32).hexdigest()


def write_record(folder: Path, meta: dict, hashers: dict[str, ChunkHasher]) -> None:
    """Write ``meta.json`` and then, last, ``checksums.json`` (sizes and digests of every file) into a
    finished entry folder whose ``.npy`` maps have been written."""
    record = {
        name: {"size": (folder / name).stat().st_size, "blake2b": h.hexdigest()}
        for name, h in hashers.items()
    }
    meta_bytes = json.dumps(meta).encode()
    (folder / META).write_bytes(meta_bytes)
    meta_digest = hashlib.blake2b(meta_bytes, digest_size=32).hexdigest()
    record[META] = {"size": len(meta_bytes), "blake2b": meta_digest}
    checksums = {
        "format": FORMAT_VERSION,
        "algorithm": "blake2b-256(npy header + blake2b-128 of each "
        "sentence chunk, in file order); meta.json: blake2b-256 of the file",
        "files": record,
    }
    (folder / CHECKSUMS).write_text(json.dumps(checksums, indent=1))


def check_entry(folder: str | os.PathLike, *, checksums: bool = True) -> str | None:
    """Check a cache entry: what is wrong with it, or ``None`` if it is good. Never raises.

    Parameters
    ----------
    folder : path
        An entry folder ``<cache root>/<key>``.
    checksums : bool
        Also recompute the checksums (reads every byte); ``False`` checks only that every recorded file
        exists with its recorded size (a ``stat`` each).

    Returns
    -------
    str or None
        What is wrong, e.g. ``"attention.npy is 1200 bytes, expected 5000 (truncated or extended)"``.

    Examples
    --------
    >>> import tempfile, probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> root = tempfile.TemporaryDirectory()
    >>> cap = pk.capture(model, ["A cat ."], cache_dir=root.name, progress=False)
    >>> check_entry(cap.path) is None
    True
    >>> (cap.path / "meta.json").write_text("{")
    1
    >>> check_entry(cap.path).startswith("meta.json is 1 bytes, expected")
    True
    """
    folder = Path(folder)
    try:
        record = _read_record(folder)
        if isinstance(record, str):
            return record
        for name, rec in record.items():
            try:
                size = (folder / name).stat().st_size
            except FileNotFoundError:
                return f"{name} is missing"
            if size != rec["size"]:
                return f"{name} is {size} bytes, expected {rec['size']} (truncated or extended)"
        if not checksums:
            return None
        meta_bytes = (folder / META).read_bytes()
        if hashlib.blake2b(meta_bytes, digest_size=32).hexdigest() != record[META]["blake2b"]:
            return f"{META} does not match its checksum (overwritten)"
        meta = json.loads(meta_bytes)
        layout = _byte_layout(meta)
        if set(layout) | {META} != set(record):
            return f"{CHECKSUMS} lists {sorted(record)}, not the files {META} describes"
        for name, chunks in layout.items():
            if _npy_digest(folder / name, chunks) != record[name]["blake2b"]:
                return f"{name} does not match its checksum (bytes overwritten)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"the entry is unreadable ({type(err).__name__}: {err})"
    return None


def _read_record(folder: Path) -> dict | str:
    """``checksums.json``'s per-file record, or a phrase saying why there is none."""
    if not folder.is_dir():
        return "the entry is not a folder"
    try:
        text = (folder / CHECKSUMS).read_bytes()
    except FileNotFoundError:
        return f"{CHECKSUMS} is missing (an entry of format 1, from probekit before checksums, or deleted)"
    try:
        data = json.loads(text)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return f"{CHECKSUMS} is unreadable (truncated or overwritten)"
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        return f"{CHECKSUMS} is not of format {FORMAT_VERSION}"
    files = data.get("files")
    if (
        not isinstance(files, dict)
        or META not in files
        or not all(
            isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get("blake2b"), str)
            for r in files.values()
        )
    ):
        return f"{CHECKSUMS} is malformed"
    return files


def _byte_layout(meta: dict) -> dict[str, np.ndarray]:
    """For each ``.npy`` file of an entry: byte offsets of its sentence chunks in the data, ``[n + 1]``."""
    n_words = np.array([len(w) for w in meta["words"]], dtype=np.int64)
    attention = meta["settings"]["attention"]
    offsets = sentence_offsets(n_words, len(meta["settings"]["layers"]) if attention else 0, meta["n_heads"])
    item = np.dtype(np.float32).itemsize
    out = {f"{h}.{layer}.npy": offsets["words"] * meta["d_model"] * item for h, layer in meta["hooks"]}
    if attention:
        out["attention.npy"] = offsets["attention"] * item
        out["special_mass.npy"] = offsets["special_mass"] * item
    return out


def _npy_digest(path: Path, chunks: np.ndarray) -> str:
    """Recompute `ChunkHasher`'s digest from the file: one sequential, buffered read."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb", buffering=1 << 20) as f:
        f.seek(0, os.SEEK_END)
        header_len = f.tell() - int(chunks[-1])
        if header_len < 0:
            raise ValueError(f"{path.name} is shorter than its data")
        f.seek(0)
        h.update(f.read(header_len))
        for n in np.diff(chunks).tolist():
            h.update(hashlib.blake2b(f.read(n), digest_size=CHUNK_DIGEST_BYTES).digest())
    return h.hexdigest()


def evict(folder: str | os.PathLike) -> None:
    """Remove a cache entry: rename it to a temporary name first (so no reader sees it half-deleted),
    then delete it. Another process having removed it already is fine.

    Parameters
    ----------
    folder : path
        An entry folder ``<cache root>/<key>``.

    Examples
    --------
    >>> import tempfile, probekit as pk
    >>> model = pk.load_model("tiny-llama")
    >>> root = tempfile.TemporaryDirectory()
    >>> cap = pk.capture(model, ["A dog ."], cache_dir=root.name, progress=False)
    >>> evict(cap.path)
    >>> cap.path.exists()
    False
    """
    folder = Path(folder)
    grave = folder.parent / temp_name(folder.name)
    try:
        os.rename(folder, grave)
    except FileNotFoundError:
        return
    except OSError as err:
        raise ProbekitError(
            f"cannot remove the capture cache entry {folder}: {err}",
            fix=f"delete the folder {folder} by hand",
        ) from err
    shutil.rmtree(grave, ignore_errors=True)


def temp_folders(root: str | os.PathLike) -> list[tuple[Path, bool]]:
    """Temporary folders ``.<key>.tmp-*`` under a cache root, each with whether it is stale: older than
    this process (`STARTED`) and not owned by a live process. The owner is the pid in the name when the
    name's host is this machine; for another machine's folder, one without a `heartbeat` for
    `FOREIGN_STALE_S`; folders named before pids were (``.<key>.tmp-<random>``) have no owner."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        m = _TEMP.match(p.name)
        if m is None or not p.is_dir():
            continue
        try:
            mtime = p.stat().st_mtime
        except FileNotFoundError:
            continue
        pid, host = m.group("pid"), m.group("host")
        if pid is None:
            owned = False
        elif host == HOST:
            owned = _pid_alive(int(pid))
        else:
            owned = time.time() - mtime < FOREIGN_STALE_S
        out.append((p, mtime < STARTED and not owned))
    return out


def remove_stale_temp(root: str | os.PathLike) -> list[Path]:
    """Delete the stale temporary folders of killed captures (see `temp_folders`); return them.

    Parameters
    ----------
    root : path
        A cache root, e.g. `default_cache_dir()`.

    Returns
    -------
    list of Path

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.TemporaryDirectory()
    >>> remove_stale_temp(root.name)
    []
    """
    removed = [p for p, stale in temp_folders(root) if stale]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


@dataclass(frozen=True)
class CacheEntry:
    """One entry of the capture cache, as `cache_entries` lists it (``status``: ``"ok"`` or the problem
    `check_entry` found with ``checksums=False``)."""

    key: str
    path: Path
    model: str
    n_sentences: int
    size_bytes: int
    created: datetime
    status: str


def cache_entries(root: str | os.PathLike) -> list[CacheEntry]:
    """The entries under a cache root, sorted by creation time, with only their sizes checked.

    Parameters
    ----------
    root : path
        A cache root, e.g. `default_cache_dir()`.

    Returns
    -------
    list of CacheEntry

    Examples
    --------
    >>> import tempfile, probekit as pk
    >>> root = tempfile.TemporaryDirectory()
    >>> _ = pk.capture(pk.load_model("tiny-bert"), ["A cat ."], cache_dir=root.name, progress=False)
    >>> [(e.model, e.n_sentences, e.status) for e in cache_entries(root.name)]
    [('tiny-bert', 1, 'ok')]
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if not (_KEY.match(p.name) and p.is_dir()):
            continue
        try:
            stats = [f.stat() for f in p.iterdir() if f.is_file()]
            created = max((s.st_mtime for s in stats), default=p.stat().st_mtime)
        except FileNotFoundError:  # evicted meanwhile
            continue
        size = sum(s.st_size for s in stats)
        try:
            meta = json.loads((p / META).read_text())
            model, n = str(meta["model"]), len(meta["sentence_ids"])
        except (OSError, ValueError, KeyError, TypeError):
            model, n = "?", 0
        out.append(
            CacheEntry(
                p.name,
                p,
                model,
                n,
                size,
                datetime.fromtimestamp(created),
                check_entry(p, checksums=False) or "ok",
            )
        )
    return sorted(out, key=lambda e: (e.created, e.key))


def damaged_entry_error(folder: Path, err: Exception) -> ProbekitError:
    """The error a `Capture` raises when a file of its entry turns out unreadable after the check."""
    return ProbekitError(
        f"the capture cache entry {folder} is damaged ({type(err).__name__}: {err})",
        fix=f"run `probekit cache verify` (it evicts damaged entries) or delete {folder}; "
        "the next capture recomputes it",
    )
