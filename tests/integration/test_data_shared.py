"""The loaders on the real reference data in ``../shared/data`` (UD English EWT dev, BLiMP).

Counts are checked against an independent reading of the files made here with plain line parsing,
so a bug in the loaders (or in the `conllu` library) cannot hide behind itself.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from probekit.data import load_dataset

pytestmark = pytest.mark.integration

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EWT_DEV = SHARED / "ud-en-ewt" / "en_ewt-ud-dev.conllu"
BLIMP = SHARED / "blimp"

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"reference data not found at {SHARED} (the ../shared/data folder next to the repository)")


@pytest.fixture(scope="module")
def ewt():
    if not EWT_DEV.is_file():
        pytest.skip(f"{EWT_DEV} not found")
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


@needs_shared
def test_ewt_dev_sentences_and_arc_counts(ewt):
    n_sentences, expected = plain_count(EWT_DEV)
    assert len(ewt) == n_sentences == 2001
    arcs = ewt.arcs()
    counts = Counter(arcs.deprel)
    for rel in ("nsubj", "amod", "det", "obj"):
        assert counts[rel] == expected[rel], rel
    assert counts["nsubj"] > 1000
    assert len(ewt.to_frame()) == sum(expected.values())


@needs_shared
def test_ewt_dev_text_matches_metadata(ewt):
    texts = [line[len("# text = "):] for line in EWT_DEV.read_text(encoding="utf-8").splitlines() if line.startswith("# text = ")]
    assert len(texts) == len(ewt)
    assert [s.text for s in ewt] == texts


@needs_shared
def test_blimp_file_loads_1000_pairs():
    path = BLIMP / "regular_plural_subject_verb_agreement_1.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = load_dataset(f"blimp:{path}")
    assert len(data) == 1000 and len(data.pairs) == 1000
    for p in data:
        assert p.good.startswith(p.prefix + " " + p.good_word)
        assert p.bad.startswith(p.prefix + " " + p.bad_word)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert data[0].good == first["sentence_good"] and data[0].paradigm == first["UID"]


@needs_shared
def test_blimp_directory_loads_every_file():
    files = sorted(BLIMP.glob("*.jsonl"))
    data = load_dataset(f"blimp:{BLIMP}")
    assert len(data) == 1000 * len(files)
    assert {p.paradigm for p in data} == {f.stem for f in files}
