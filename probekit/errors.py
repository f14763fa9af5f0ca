"""One error type for everything a user can get wrong.

A `ProbekitError` says what was wrong, where (file:line, config key, sentence id) and what to do.
Raise it for bad *user input*; internal invariants may still use plain exceptions.
"""

from __future__ import annotations


class ProbekitError(Exception):
    """A user-facing error: what was wrong, where, and what to do about it.

    The command line prints it as one message and exits with status 2.

    Examples
    --------
    >>> import probekit as pk
    >>> try:
    ...     pk.load_dataset("nope:x")
    ... except pk.ProbekitError as err:
    ...     print(err.what)
    unknown dataset scheme 'nope'...
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"(at {where})")
        msg = " ".join(parts)
        if fix:
            msg += f"\n  what to do: {fix}"
        super().__init__(msg)
