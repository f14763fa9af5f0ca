"""`load_dataset` dispatch, spec parsing and the `seed:` sentences."""

from __future__ import annotations

import functools
import sys

import pytest

from probekit.data import SCHEMES, load_dataset, parse, parse_spec, parse_text
from probekit.errors import ProbekitError


def test_parse_spec():
    assert parse_spec("template:svo_adj?n=500") == ("template", "svo_adj", {"n": 500})
    assert parse_spec("ud:some/dir/file?.conllu") == ("ud", "some/dir/file?.conllu", {})


@pytest.mark.parametrize("spec", ["nope:x", "no scheme at all", "ud:"])
def test_bad_specs(spec):
    with pytest.raises(ProbekitError) as e:
        load_dataset(spec)
    if spec.startswith("nope"):
        assert all(s in str(e.value) for s in SCHEMES)


def test_bad_arguments():
    with pytest.raises(ProbekitError, match="max_sentences"):
        load_dataset("seed:all", max_sentences=0)
    with pytest.raises(ProbekitError, match="seed"):
        load_dataset("seed:all", seed="1")


def test_seed_bank():
    (s,) = load_dataset("seed:bank")
    assert s.text == "The bank of the river was steep, and I also need to go to the bank to deposit money."
    assert s.words[1] == s.words[16] == "bank"
    assert s.labels["sense"][1] == "river" and s.labels["sense"][16] == "finance"
    assert sum(x is not None for x in s.labels["sense"]) == 2
    assert s.space_after[6] is False and s.words[7] == ","
    assert s.deprels[1] == "nsubj" and s.heads[1] == 6 and s.deprels[19] == "obj" and s.heads[19] == 18


def test_seed_explored_and_all():
    (s,) = load_dataset("seed:explored")
    assert s.text == "The curious cat explored the mysterious room."
    assert s.heads == (2, 2, 3, -1, 6, 6, 3, 3)
    assert s.deprels == ("det", "amod", "nsubj", "root", "det", "amod", "obj", "punct")
    data = load_dataset("seed:all")
    assert [x.id for x in data] == ["seed-bank", "seed-explored"]
    assert len(load_dataset("seed:all", max_sentences=1)) == 1
    with pytest.raises(ProbekitError, match="explored"):
        load_dataset("seed:nothing")


def test_missing_spacy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` fail
    monkeypatch.setattr(parse, "_nlp", functools.lru_cache(maxsize=1)(parse._nlp.__wrapped__))
    with pytest.raises(ProbekitError, match=r"probekit-mi\[parse\]"):
        parse_text("Dogs bark.")
