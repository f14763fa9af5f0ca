"""Output folders: checked before any work, filled through a temporary sibling, moved into place at the end.

Every `probekit` command that writes a folder (``--out``) calls `check_writable` on it (and on the capture
cache) *before* it loads a model, so an output path that cannot be written fails in a second with a
`ProbekitError`, not after the computation with a traceback. Single-shot commands then write through
`staged_output`:

* the results go into ``<out>.tmp-<pid>``, a sibling of ``<out>`` (same file system, so the final move is
  a rename);
* on success, a new ``<out>`` is that folder renamed; if ``<out>`` already exists as a folder, each
  written file replaces its namesake inside it (one rename per file) and every other file there is kept;
* on failure (an error, Ctrl-C) the temporary sibling and any parent folders made for it are removed.

A command killed outright (SIGKILL) leaves only its ``<out>.tmp-<pid>`` sibling, never a half-filled
``<out>``; the next command writing to the same ``<out>`` removes siblings whose process is gone.
``probekit run`` resumes stage by stage, so it writes in place (each table atomically) after the same
check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from probekit.errors import ProbekitError

__all__ = ["check_writable", "final_path", "staged_output"]


def check_writable(folder: str | os.PathLike, *, what: str = "--out") -> Path:
    """Check that ``folder`` is, or can be created as, a writable folder; create nothing.

    Parameters
    ----------
    folder : path
        The folder a command will write into.
    what : str
        How the user named it, for the message (``--out``, ``PROBEKIT_CACHE``, a config key).

    Returns
    -------
    Path
        ``folder``, with ``~`` expanded.

    Raises
    ------
    ProbekitError
        When ``folder`` or one of its parents is a file, or the nearest existing parent is not writable.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> check_writable(root / "new" / "folder") == root / "new" / "folder"
    True
    >>> _ = (root / "f.txt").write_text("x")
    >>> check_writable(root / "f.txt")
    Traceback (most recent call last):
    ...
    probekit.errors.ProbekitError: --out ... is an existing file, not a folder...
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ProbekitError(
            f"{what} {path} is an existing file, not a folder",
            fix=f"name a folder for {what}, or move the file away",
        )
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ProbekitError(
            f"{what} {path} cannot be created: {existing} is a file",
            fix=f"name a folder for {what} that is not inside a file",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ProbekitError(
            f"{what} {path} is not writable: no write permission on {existing}",
            fix=f"choose a writable folder for {what}, or change the permissions of {existing}",
        )
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_dead_siblings(out: Path) -> None:
    """Remove ``<out>.tmp-<pid>`` folders left by killed commands (their process is gone)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f"{out.name}.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    """Move every file of ``src`` into ``dst`` (one rename each), replacing namesakes, keeping others."""
    for item in sorted(src.iterdir()):
        target = dst / item.name
        if item.is_dir() and target.is_dir():
            _merge(item, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, *, what: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to write into; move it onto ``out`` when the block succeeds.

    ``out`` is checked first (`check_writable`). A new ``out`` is the sibling renamed; an existing
    ``out`` folder gets each written file replaced (other files kept). When the block raises, the
    sibling (and parent folders made for it) are removed and ``out`` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with staged_output(root / "out") as tmp:
    ...     _ = (tmp / "a.csv").write_text("x\\n")
    >>> sorted(p.name for p in root.iterdir()), (root / "out" / "a.csv").read_text()
    (['out'], 'x\\n')
    """
    out = check_writable(out, what=what)
    made = []  # parent folders this call creates, removed again on failure
    parent = out.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_siblings(out)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.is_dir():
            _merge(tmp, out)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def final_path(path: str | os.PathLike, tmp: Path, out: str | os.PathLike) -> Path:
    """Where ``path`` (written under ``tmp``) lies once `staged_output` has moved it onto ``out``."""
    try:
        return Path(out) / Path(path).relative_to(tmp)
    except ValueError:
        return Path(path)
