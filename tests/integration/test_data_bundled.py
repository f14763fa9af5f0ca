"""The loaders on the bundled real data in ``data/`` (UD English EWT dev, BLiMP).

Counts are checked against an independent reading of the files made here with plain line parsing,
so a bug in the loaders (or in the `conllu` library) cannot hide behind itself.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from probekit.data import load_dataset
from probekit.data.bundled import BLIMP_DIR as BLIMP
from probekit.data.bundled import EWT_DEV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ewt():
    return load_dataset(f"ud:{EWT_DEV}")


def plain_count(path: Path) -> tuple[int, Counter]:
    """Sentences and base-deprel counts by splitting lines on tabs (no CoNLL-U library)."""
    sentences, deprels, in_sentence = 0, Counter(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            in_sentence = False
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if "-" in cols[0] or "." in cols[0]:
            continue  # multi-word token range / empty node
        if not in_sentence:
            sentences, in_sentence = sentences + 1, True
        deprels[cols[7].split(":")[0]] += 1
    return sentences, deprels


def test_ewt_dev_sentences_and_arc_counts(ewt):
    n_sentences, expected = plain_count(EWT_DEV)
    assert len(ewt) == n_sentences == 2001
    arcs = ewt.arcs()
    counts = Counter(arcs.deprel)
    for rel in ("nsubj", "amod", "det", "obj"):
        assert counts[rel] == expected[rel], rel
    assert counts["nsubj"] > 1000
    assert len(ewt.to_frame()) == sum(expected.values())


def test_bundled_data_has_licences_and_attribution():
    readme = (BLIMP.parent / "README.md").read_text()
    assert (EWT_DEV.parent / "LICENSE.txt").read_text().startswith("Attribution-ShareAlike 4.0 International")
    assert "CC BY 4.0" in (BLIMP / "LICENSE.md").read_text()
    assert "Warstadt" in readme and "CC BY-SA 4.0" in readme
    assert sorted(p.stem for p in BLIMP.glob("*.jsonl")) == sorted(
        [
            "determiner_noun_agreement_1",
            "determiner_noun_agreement_with_adjective_1",
            "irregular_plural_subject_verb_agreement_1",
            "irregular_plural_subject_verb_agreement_2",
            "regular_plural_subject_verb_agreement_1",
            "regular_plural_subject_verb_agreement_2",
        ]
    )


def test_ewt_dev_text_matches_metadata(ewt):
    texts = [
        line[len("# text = ") :]
        for line in EWT_DEV.read_text(encoding="utf-8").splitlines()
        if line.startswith("# text = ")
    ]
    assert len(texts) == len(ewt)
    assert [s.text for s in ewt] == texts


def test_blimp_file_loads_1000_pairs():
    path = BLIMP / "regular_plural_subject_verb_agreement_1.jsonl"
    data = load_dataset(f"blimp:{path}")
    assert len(data) == 1000 and len(data.pairs) == 1000
    for p in data:
        assert p.good.startswith(p.prefix + " " + p.good_word)
        assert p.bad.startswith(p.prefix + " " + p.bad_word)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert data[0].good == first["sentence_good"] and data[0].paradigm == first["UID"]


def test_blimp_directory_loads_every_file():
    files = sorted(BLIMP.glob("*.jsonl"))
    data = load_dataset(f"blimp:{BLIMP}")
    assert len(data) == 1000 * len(files)
    assert {p.paradigm for p in data} == {f.stem for f in files}
