"""`Dataset`: sequence protocol, tidy frames, arcs, deterministic splits and the lexical split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from probekit.data import Dataset, MinimalPair, Sentence, load_dataset
from probekit.data.dataset import holdout_mask
from probekit.errors import ProbekitError

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.conllu"


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(f"ud:{TINY}")


@pytest.fixture(scope="module")
def svo():
    return load_dataset("template:svo_adj?n=60", seed=0)


def test_sequence_protocol(tiny):
    assert len(tiny) == 6 and list(tiny) == list(tiny.items)
    assert tiny[0].id == "tiny-1" and tiny[-1] is tiny.items[-1]
    assert isinstance(tiny[1:3], Dataset) and len(tiny[1:3]) == 2
    assert tiny.spec == f"ud:{TINY}"
    assert len(tiny.sentences) == 6 and tiny.pairs == ()


def test_head_and_subset(tiny):
    assert [s.id for s in tiny.head(2)] == ["tiny-1", "tiny-2"]
    assert list(tiny.subset(2)) == list(tiny.head(2))
    assert [s.id for s in tiny.subset([4, 0])] == ["tiny-5", "tiny-1"]
    with pytest.raises(ProbekitError):
        tiny.head(-1)
    with pytest.raises(ProbekitError):
        tiny.subset([99])


def test_rejects_non_items():
    with pytest.raises(ProbekitError, match="not a Sentence"):
        Dataset("x", ("just a string",))


def test_to_frame_words(tiny):
    f = tiny.to_frame()
    assert len(f) == sum(len(s) for s in tiny)
    assert list(f.columns[:9]) == [
        "sentence_idx",
        "sentence_id",
        "word_id",
        "word",
        "head",
        "deprel",
        "deprel_full",
        "upos",
        "space_after",
    ]
    assert "number" in f.columns
    row = f[(f.sentence_id == "tiny-1") & (f.word == "cat")].iloc[0]
    assert (row.word_id, row["head"], row.deprel, row.upos, row.number) == (2, 3, "nsubj", "NOUN", "Sing")
    assert f[f.sentence_id == "tiny-4"].deprel_full.tolist()[1] == "nsubj:pass"


def test_to_frame_pairs_and_mixed():
    pairs = load_dataset("template:agreement?n=12")
    f = pairs.to_frame()
    assert len(f) == 12 and {"id", "good", "bad", "attractor", "number"} <= set(f.columns)
    mixed = Dataset("mixed", (*pairs.items[:2], *load_dataset("seed:explored").items))
    with pytest.raises(ProbekitError, match="kind"):
        mixed.to_frame()
    assert len(mixed.to_frame(kind="words")) == 8 and len(mixed.to_frame(kind="pairs")) == 2


def test_arcs(tiny):
    a = tiny.arcs()
    assert len(a) == sum(len(s) - s.heads.count(-1) for s in tiny)
    row = a[(a.sentence_id == "tiny-1") & (a.deprel == "amod")].iloc[0]
    assert (row.dep_word, row.head_word, row.distance) == ("curious", "cat", 1)
    assert (a.distance == a["head"] - a.dep).all()


def test_split_is_deterministic_disjoint_and_complete(svo):
    dev, test = svo.split(test_size=0.25, seed=3)
    dev2, test2 = svo.split(test_size=0.25, seed=3)
    assert [s.id for s in dev] == [s.id for s in dev2] and [s.id for s in test] == [s.id for s in test2]
    assert len(test) == 15 and len(dev) == 45
    assert not {s.id for s in dev} & {s.id for s in test}
    assert {s.id for s in dev} | {s.id for s in test} == {s.id for s in svo}
    other = svo.split(test_size=0.25, seed=4)[1]
    assert {s.id for s in other} != {s.id for s in test}
    assert [s.id for s in dev] == sorted(s.id for s in dev)  # both sides keep the dataset's order


def test_split_validates_test_size(svo):
    for bad in (0, 1, 1.5, -0.1, "half"):
        with pytest.raises(ProbekitError, match="test_size"):
            svo.split(test_size=bad)


def test_holdout_mask_keeps_units_together_and_is_deterministic():
    rng = np.random.default_rng(0)
    units = np.asarray([f"s{k}" for k in rng.integers(0, 30, 400)], dtype=object)
    for order in ("hash", "permutation"):
        for size in ("units", "instances"):
            mask = holdout_mask(units, 0.3, seed=2, order=order, size=size)
            assert mask.dtype == bool and mask.shape == units.shape
            assert not set(units[mask]) & set(units[~mask])  # a unit is never on both sides
            assert (mask == holdout_mask(units, 0.3, seed=2, order=order, size=size)).all()
            assert not (mask == holdout_mask(units, 0.3, seed=3, order=order, size=size)).all()
    k = len(set(units))
    assert len(set(units[holdout_mask(units, 0.3, seed=2, size="units")])) == round(0.3 * k)
    # "instances": the fewest first-ranked units reaching 30% of the instances
    mask = holdout_mask(units, 0.3, seed=2, order="permutation", size="instances")
    assert (
        mask.sum() >= 0.3 * len(units)
        and mask.sum() < 0.3 * len(units) + np.bincount(np.unique(units, return_inverse=True)[1]).max()
    )


def test_holdout_mask_hash_order_does_not_depend_on_other_units():
    """With order="hash" a unit's rank is its own hash: adding a unit never reshuffles the others, so
    the 5 units held out of 10 stay held out among the 6 held out of 11."""
    ten = [f"u{i}" for i in range(10)]
    small = holdout_mask(ten, 0.5, seed=0)
    large = holdout_mask([*ten, "extra"], 0.5, seed=0)
    assert small.sum() == 5 and large.sum() == 6
    assert set(np.flatnonzero(small)) <= set(np.flatnonzero(large))


def test_holdout_mask_errors():
    with pytest.raises(ProbekitError, match="one sentence"):
        holdout_mask(["a", "a"], 0.5, what="sentence")
    with pytest.raises(ProbekitError, match="test_size"):
        holdout_mask(["a", "b"], 1.0)
    with pytest.raises(ProbekitError, match="order"):
        holdout_mask(["a", "b"], 0.5, order="random")


def test_dataset_splits_are_holdout_masks(svo):
    """Dataset.split and Dataset.lexical_split are holdout_mask with hash order and a unit count."""
    _, test = svo.split(test_size=0.25, seed=3)
    mask = holdout_mask([f"{s.id}:0" for s in svo], 0.25, seed=3, order="hash", size="units")
    assert [s.id for s in test] == [s.id for s, m in zip(svo, mask, strict=True) if m]
    lex = svo.lexical_split(test_size=0.3, seed=1)
    types = sorted({w.lower() for s in svo for w in s.words})
    held = holdout_mask(types, 0.3, seed=1, order="hash", size="units")
    assert lex.test_types == {t for t, h in zip(types, held, strict=True) if h}


def test_split_keeps_its_sha256_ranking(svo):
    """The ranking is sha256(f"{seed}:{id}:{k}"): pinned, so a change of the split code shows up here."""
    _, test = svo.split(test_size=0.1, seed=0)
    expected = sorted(svo, key=lambda s: hashlib.sha256(f"0:{s.id}:0".encode()).hexdigest())[:6]
    assert {s.id for s in test} == {s.id for s in expected}


def test_lexical_split_keeps_held_out_types_out_of_train(svo):
    f = svo.to_frame()
    lex = svo.lexical_split(seed=0)
    assert len(lex.train_mask) == len(f) and (lex.train_mask ^ lex.test_mask).all()
    train_types = set(f.word[lex.train_mask].str.lower())
    test_types = set(f.word[lex.test_mask].str.lower())
    assert not train_types & test_types
    assert test_types == set(lex.test_types)
    assert lex.is_test(next(iter(lex.test_types)).upper())
    again = svo.lexical_split(seed=0)
    assert again.test_types == lex.test_types and (again.test_mask == lex.test_mask).all()


def test_lexical_split_with_words_of_interest(svo):
    nouns = {w.lower() for s in svo for w, u in zip(s.words, s.upos, strict=True) if u == "NOUN"}
    lex = svo.lexical_split(words_of_interest=nouns, test_size=0.3, seed=1)
    assert lex.test_types <= nouns and lex.train_types | lex.test_types == nouns
    f = svo.to_frame()
    held = f.word[lex.test_mask].str.lower()
    assert set(held) <= lex.test_types and not set(f.word[lex.train_mask].str.lower()) & lex.test_types
    with pytest.raises(ProbekitError):
        svo.lexical_split(words_of_interest="cat")


def test_lexical_split_needs_sentences():
    with pytest.raises(ProbekitError, match="sentences"):
        load_dataset("template:agreement?n=6").lexical_split()


def test_build_by_hand():
    s = Sentence(id="a", words=("Hi", "there"), heads=(-1, 0), deprels=("root", "advmod"))
    p = MinimalPair(id="p", paradigm="x", good="A b.", bad="A c.", prefix="A", good_word="b.", bad_word="c.")
    d = Dataset("hand", [s, p])
    assert d.sentences == (s,) and d.pairs == (p,) and isinstance(d.items, tuple)


@pytest.mark.parametrize("bad", [True, False, 2.5, None])
def test_subset_of_a_bool_or_a_non_iterable_is_a_probekit_error(tiny, bad):
    # issue 15: subset(True) used to reach list(True) and raise a raw TypeError
    with pytest.raises(ProbekitError, match="subset takes an int n or integer indices"):
        tiny.subset(bad)


def test_splitting_one_sentence_names_the_real_problem(tiny):
    with pytest.raises(ProbekitError, match="only 1 sentence: a dev/test split needs at least 2"):
        tiny.head(1).split()
