"""Every public name of `probekit` documents itself with a runnable numpydoc ``Examples`` section.

The examples run here as doctests (on the tiny random-init models and generated data), so an example
that drifts from the code fails the suite.
"""

from __future__ import annotations

import doctest
import inspect
import os

import pytest

import probekit

pytestmark = pytest.mark.usefixtures("one_thread")

PUBLIC = sorted(n for n in probekit.__all__ if not n.startswith("_") and n != "__version__")


def _doc(name: str) -> str:
    return inspect.getdoc(getattr(probekit, name)) or ""


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_numpydoc_examples(name):
    doc = _doc(name)
    assert doc, f"probekit.{name} has no docstring"
    assert "Examples\n--------" in doc, f"probekit.{name}: add a numpydoc 'Examples' section"
    assert ">>>" in doc.split("Examples\n--------", 1)[1], (
        f"probekit.{name}: the Examples section has no >>> line"
    )


@pytest.mark.parametrize("name", PUBLIC)
def test_public_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    monkeypatch.setenv("PROBEKIT_CACHE", os.environ.get("PROBEKIT_CACHE", str(tmp_path / "cache")))
    obj = getattr(probekit, name)
    finder = doctest.DocTestFinder(recurse=False)
    globs = {**vars(inspect.getmodule(obj)), "pk": probekit}  # as doctest.testmod would, plus `pk`
    tests = [t for t in finder.find(obj, name=f"probekit.{name}", globs=globs) if t.examples]
    assert tests, f"probekit.{name}: no doctest found"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"probekit.{name}: {result.failed} of {result.attempted} example lines failed"
