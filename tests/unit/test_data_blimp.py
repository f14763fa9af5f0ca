"""BLiMP JSONL loading (`blimp:` scheme)."""

from __future__ import annotations

import json

import pytest

from probekit.data import load_blimp, load_dataset
from probekit.errors import ProbekitError


def record(i=0, **overrides):
    r = {
        "sentence_good": "The dogs bark.",
        "sentence_bad": "The dogs barks.",
        "one_prefix_prefix": "The dogs",
        "one_prefix_word_good": "bark",
        "one_prefix_word_bad": "barks",
        "field": "morphology",
        "UID": "toy_agreement",
        "pairID": str(i),
    }
    r.update(overrides)
    return {k: v for k, v in r.items() if v is not None}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_file_loads(tmp_path):
    path = write(tmp_path / "toy.jsonl", [record(0), record(1)])
    data = load_dataset(f"blimp:{path}")
    assert len(data) == 2 and data.sentences == ()
    p = data[0]
    assert (p.id, p.paradigm, p.prefix, p.good_word, p.bad_word) == (
        "toy_agreement-0",
        "toy_agreement",
        "The dogs",
        "bark",
        "barks",
    )
    assert p.labels["field"] == "morphology" and p.labels["method"] == "one_prefix"
    assert p.source == f"{path}:1"


def test_directory_reads_all_jsonl_sorted(tmp_path):
    write(tmp_path / "b.jsonl", [record(0, UID="b")])
    write(tmp_path / "a.jsonl", [record(0, UID="a"), record(1, UID="a")])
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_dataset(f"blimp:{tmp_path}")
    assert [p.paradigm for p in data] == ["a", "a", "b"]
    assert len(load_dataset(f"blimp:{tmp_path}", max_sentences=2)) == 2


def test_two_prefix_record(tmp_path):
    r = {
        "sentence_good": "The students perform.",
        "sentence_bad": "The student perform.",
        "two_prefix_prefix_good": "The students",
        "two_prefix_prefix_bad": "The student",
        "two_prefix_word": "perform",
        "UID": "two",
        "pairID": "0",
    }
    (p,) = load_blimp(write(tmp_path / "two.jsonl", [r]))
    assert (p.prefix, p.good_word, p.bad_word, p.labels["method"]) == (
        "The",
        "students",
        "student",
        "two_prefix",
    )


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "toy.jsonl", [record(0), record(1, one_prefix_word_bad=None)])
    with pytest.raises(ProbekitError, match="one_prefix_word_bad") as e:
        load_dataset(f"blimp:{path}")
    assert f"{path}:2" in str(e.value)


def test_invalid_json(tmp_path):
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps(record(0)) + "\n{not json\n")
    with pytest.raises(ProbekitError, match="invalid JSON") as e:
        load_blimp(path)
    assert f"{path}:2" in str(e.value)


def test_prefix_must_start_the_sentence(tmp_path):
    path = write(tmp_path / "toy.jsonl", [record(0, one_prefix_prefix="A cat")])
    with pytest.raises(ProbekitError, match="does not start sentence_good"):
        load_blimp(path)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(ProbekitError, match="not found"):
        load_dataset(f"blimp:{tmp_path / 'missing'}")
    with pytest.raises(ProbekitError, match=r"no \*\.jsonl"):
        load_dataset(f"blimp:{tmp_path}")
