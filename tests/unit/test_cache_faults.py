"""The capture cache checks itself (issue 15): damaged, truncated, deleted or outdated entries are evicted
with a warning and recomputed, stale temporary folders of killed captures are removed, and
``probekit cache info|verify|clear`` inspect and clean the cache.

Only public names (`probekit.capture`, `probekit.cli.main`) and file names are used, so that the failure
tests also run on the code before issue 15 (``PYTHONPATH=/work/orig``), where they fail.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import probekit as pk
from probekit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SENTS = [
    "The cat sat on the mat .",
    "Dogs bark .",
    "A very small bird sang loudly near the old river bank .",
    "She gave him the book yesterday .",
    "It rains .",
]
KW = {"resid": ("resid_pre", "resid_post"), "attention": True, "batch_size": 2, "progress": False}
#: one file of every kind an entry has (tiny-bert, 2 layers: resid_pre.0, resid_post.{0,1}, ...)
FILES = [
    "resid_pre.0.npy",
    "resid_post.1.npy",
    "attention.npy",
    "special_mass.npy",
    "meta.json",
    "checksums.json",
]
EVICTED = "evicting it and recomputing"


def _arrays(cap) -> dict[str, np.ndarray]:
    out = {f"{h}.{layer}": np.array(cap.resid(h, layer)) for h, layer in map(tuple, cap.meta["hooks"])}
    out |= {f"attention{i}": cap.attention(i) for i in range(len(cap))}
    out |= {f"special_mass{i}": cap.special_mass(i) for i in range(len(cap))}
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def clean(tiny_bert):
    """The arrays of a clean capture, never cached."""
    return _arrays(pk.capture(tiny_bert, SENTS, cache=False, **KW))


def _quiet_capture(model, cache_dir):
    """A capture that must not warn (the entry is good)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return pk.capture(model, SENTS, cache_dir=cache_dir, **KW)


def _entry(cache_dir: Path) -> Path:
    (folder,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    return folder


def corrupt(path: Path, start: int = 0, stop: int | None = None) -> None:
    """Overwrite bytes [start, stop) with their bitwise complement; the size is unchanged."""
    data = bytearray(path.read_bytes())
    stop = len(data) if stop is None else min(stop, len(data))
    data[start:stop] = bytes(255 - b for b in data[start:stop])
    path.write_bytes(bytes(data))


# ---- failure 1: a corrupted entry was reused silently --------------------------------------------------


def test_issue_corrupted_attention_is_not_reused(tmp_path, monkeypatch):
    """The reported case through the CLI: overwrite bytes 1000-200000 of attention.npy (same size) and
    rerun `probekit capture`: it warns, recomputes, and attention.csv is the clean run's."""
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "cache"))
    args = ["capture", "--model", "tiny-bert", "--data", "template:svo_adj?n=40", "--out"]
    assert main([*args, str(tmp_path / "clean")]) == 0
    att = _entry(tmp_path / "cache" / "capture") / "attention.npy"
    size = att.stat().st_size
    assert size > 2000
    corrupt(att, 1000, 200000)
    assert att.stat().st_size == size
    with pytest.warns(UserWarning, match=EVICTED):
        assert main([*args, str(tmp_path / "again")]) == 0
    for name in ("attention.csv", "check_attention.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


# ---- failure 2: a truncated file broke every later run ---------------------------------------------------


@pytest.mark.parametrize("name", ["attention.npy", "meta.json"])
def test_issue_truncated_file_is_evicted_not_a_traceback(tiny_bert, cache_dir, clean, name):
    """Was ``ValueError: mmap length is greater than file size`` (``JSONDecodeError`` for meta.json) on every
    later run, the entry never evicted. Now: one warning naming the folder, then the entry is rebuilt."""
    pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    folder = _entry(cache_dir)
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=EVICTED) as record:
        cap = pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    assert str(folder) in str(record[0].message) and name in str(record[0].message)
    _assert_same(_arrays(cap), clean)
    _assert_same(_arrays(_quiet_capture(tiny_bert, cache_dir)), clean)  # evicted and rebuilt once


# ---- every kind of fault on every kind of file -----------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 7])


def _corrupt_middle(path: Path) -> None:
    n = path.stat().st_size
    corrupt(path, n // 3, 2 * n // 3)


def _delete(path: Path) -> None:
    path.unlink()


def _corrupt_header(path: Path) -> None:  # the .npy header (dtype, shape) is covered by the checksum too
    corrupt(path, 10, 40)


def _edit_one_digest(path: Path) -> None:  # checksums.json still valid JSON, one digest changed
    record = json.loads(path.read_text())
    entry = record["files"]["attention.npy"]
    entry["blake2b"] = ("0" if entry["blake2b"][0] != "0" else "1") + entry["blake2b"][1:]
    path.write_text(json.dumps(record, indent=1))


FAULTS = [(f, fault) for f in FILES for fault in (_corrupt_middle, _truncate, _delete)] + [
    ("attention.npy", _corrupt_header),
    ("resid_post.1.npy", _corrupt_header),
    ("checksums.json", _edit_one_digest),
]


@pytest.mark.parametrize(("name", "fault"), FAULTS, ids=[f"{n}-{f.__name__.strip('_')}" for n, f in FAULTS])
def test_fault_injection(tiny_bert, cache_dir, clean, name, fault):
    first = pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    _assert_same(_arrays(first), clean)
    del first
    files = sorted(p.name for p in _entry(cache_dir).iterdir())
    assert set(FILES) < set(files)
    path = _entry(cache_dir) / name
    before = path.stat().st_size
    fault(path)
    if fault in (_corrupt_middle, _corrupt_header):
        assert path.stat().st_size == before
    with pytest.warns(UserWarning, match=EVICTED):
        again = pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    _assert_same(_arrays(again), clean)
    assert sorted(p.name for p in _entry(cache_dir).iterdir()) == files
    _assert_same(_arrays(_quiet_capture(tiny_bert, cache_dir)), clean)


def test_old_format_entry_is_recomputed_once(tiny_bert, cache_dir, clean):
    """An entry without checksums.json (format 1, before issue 15) is recomputed once, under the same key."""
    key = pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW).key
    (_entry(cache_dir) / "checksums.json").unlink()
    with pytest.warns(UserWarning, match="format 1"):
        again = pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    assert again.key == key
    _assert_same(_arrays(_quiet_capture(tiny_bert, cache_dir)), clean)


# ---- stale temporary folders -----------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_are_removed_at_the_next_capture(tiny_bert, cache_dir, monkeypatch):
    from probekit.activations import cache as cachemod  # (absent before issue 15: the test fails there)

    cache_dir.mkdir(parents=True)
    key, host = "0123456789abcdef0123456789abcdef", cachemod.HOST
    now = time.time()
    monkeypatch.setattr(cachemod, "STARTED", now)  # this process "started" now

    def temp(name: str, age: float) -> Path:
        p = cache_dir / name
        (p / "x").mkdir(parents=True)
        (p / "x" / "attention.npy").write_bytes(b"\0" * 100)
        os.utime(p, (now - age, now - age))
        return p

    removed = [
        temp(f".{key}.tmp-{_dead_pid()}@{host}-abcd1234", 60),  # killed capture on this machine
        temp(f".{key}.tmp-abcd1234", 60),  # named before pids were: no owner
        temp(f".{key}.tmp-{_dead_pid()}@other-node-7-abcd0001", 2 * 3600),  # other machine, no heartbeat
    ]
    kept = [
        temp(f".{key}.tmp-{os.getppid()}@{host}-abcd0002", 3600),  # owner still running
        temp(f".{key}.tmp-{_dead_pid()}@{host}-beef0003", -5),  # newer than this process
        temp(f".{key}.tmp-{_dead_pid()}@other-node-7-abcd0004", 60),  # other machine, recent heartbeat
    ]
    other = cache_dir / "notes.txt"
    other.write_text("not ours")
    pk.capture(tiny_bert, ["The cat sat ."], cache_dir=cache_dir, progress=False)
    assert [p.exists() for p in removed] == [False] * 3
    assert [p.exists() for p in kept] == [True] * 3 and other.exists()


def test_capture_names_its_temp_folder_and_beats(tiny_bert, cache_dir, monkeypatch):
    """The temp folder carries pid@host, and its mtime is refreshed after every batch (the heartbeat
    another machine sharing the cache relies on)."""
    capmod = importlib.import_module("probekit.activations.capture")
    beats = []
    monkeypatch.setattr(capmod, "heartbeat", lambda folder: beats.append(folder.name))
    pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    assert len(beats) == -(-len(SENTS) // KW["batch_size"])
    assert beats[0].split(".tmp-")[1].startswith(f"{os.getpid()}@")


# ---- probekit cache info / verify / clear ----------------------------------------------------------------


@pytest.fixture()
def two_entries(tiny_bert, tiny_llama, cache_dir):
    a = pk.capture(tiny_bert, SENTS, cache_dir=cache_dir, **KW)
    b = pk.capture(tiny_llama, SENTS[:2], cache_dir=cache_dir, progress=False)
    return a.path, b.path


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_info_lists_entries(two_entries, cache_dir, capsys):
    rc, out, _ = _cli(capsys, "cache", "info", "--cache-dir", str(cache_dir))
    assert rc == 0
    assert f"cache root: {cache_dir}" in out
    lines = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line[:32] in {p.name for p in two_entries}
    }
    bert, llama = (lines[p.name] for p in two_entries)
    assert bert[1:3] == ["tiny-bert", str(len(SENTS))] and bert[-1] == "ok"
    assert llama[1:3] == ["tiny-llama", "2"] and llama[-1] == "ok"
    assert "2 entries" in out


def test_cli_info_shows_damage_and_default_root(two_entries, cache_dir, capsys, monkeypatch):
    _truncate(two_entries[0] / "attention.npy")
    monkeypatch.setenv("PROBEKIT_CACHE", str(cache_dir.parent))
    cache_dir.rename(cache_dir.parent / "capture")
    rc, out, _ = _cli(capsys, "cache", "info")
    assert rc == 0 and f"cache root: {cache_dir.parent / 'capture'}" in out
    assert "attention.npy is" in out and "(truncated or extended)" in out


def test_cli_info_on_missing_root(tmp_path, capsys):
    rc, out, _ = _cli(capsys, "cache", "info", "--cache-dir", str(tmp_path / "none"))
    assert rc == 0 and "0 entries" in out


def test_cli_verify(two_entries, cache_dir, capsys):
    rc, out, _ = _cli(capsys, "cache", "verify", "--cache-dir", str(cache_dir))
    assert rc == 0 and "2 of 2 entries good" in out
    bert, llama = two_entries
    _corrupt_middle(bert / "special_mass.npy")  # same size: only the checksum sees it
    rc, out, _ = _cli(capsys, "cache", "verify", "--keep", "--cache-dir", str(cache_dir))
    assert rc == 1 and f"BAD  {bert.name}" in out and "special_mass.npy does not match" in out
    assert bert.exists()
    rc, out, _ = _cli(capsys, "cache", "verify", "--cache-dir", str(cache_dir))
    assert rc == 1 and "evicted" in out
    assert not bert.exists() and llama.exists()
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no leftover temp folder
    rc, out, _ = _cli(capsys, "cache", "verify", "--cache-dir", str(cache_dir))
    assert rc == 0 and "1 of 1 entries good" in out


def test_cli_clear(two_entries, cache_dir, capsys):
    stale = cache_dir / f".{'a' * 32}.tmp-00000000"
    stale.mkdir()
    os.utime(stale, (time.time() - 3600,) * 2)
    rc, out, _ = _cli(capsys, "cache", "clear", "--stale", "--cache-dir", str(cache_dir))
    assert rc == 0 and "removed 1 stale temporary folder(s)" in out
    assert not stale.exists() and all(p.exists() for p in two_entries)
    rc, out, _ = _cli(capsys, "cache", "clear", "--cache-dir", str(cache_dir))
    assert rc == 0 and "removed 2 entries" in out
    assert list(cache_dir.iterdir()) == []


def test_cli_cache_errors_exit_2(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for action in ("info", "verify", "clear"):
        rc, _, err = _cli(capsys, "cache", action, "--cache-dir", str(not_a_folder))
        assert rc == 2 and "is not a folder" in err
