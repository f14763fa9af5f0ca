"""`relation_instances`: word-pair relations from gold arcs, positional baselines, aliases, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from probekit.data import POSITIONAL_RELATIONS, RELATION_ALIASES, load_dataset, relation_instances
from probekit.errors import ProbekitError

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.conllu"


@pytest.fixture(scope="module")
def explored():
    return load_dataset("seed:explored")


def test_columns_and_word_pair_relations(explored):
    r = relation_instances(explored, ["nsubj", "amod"])
    assert list(r.columns) == ["sentence_idx", "sentence_id", "relation", "direction", "src", "tgt", "offset"]
    got = {(x.relation, x.direction, x.src, x.tgt) for x in r.itertuples()}
    assert got == {
        ("nsubj", "dep_to_head", 2, 3),
        ("nsubj", "head_to_dep", 3, 2),
        ("amod", "dep_to_head", 1, 2),
        ("amod", "head_to_dep", 2, 1),
        ("amod", "dep_to_head", 5, 6),
        ("amod", "head_to_dep", 6, 5),
    }
    assert (r.offset == r.tgt - r.src).all()


def test_one_direction(explored):
    r = relation_instances(explored, ["obj"], directions=("head_to_dep",))
    assert r[["src", "tgt", "direction"]].values.tolist() == [[3, 6, "head_to_dep"]]


def test_dobj_is_an_alias_of_obj(explored):
    assert RELATION_ALIASES["dobj"] == "obj"
    r = relation_instances(explored, ["dobj"], directions=("dep_to_head",))
    assert r[["relation", "src", "tgt"]].values.tolist() == [["dobj", 6, 3]]


def test_positional_relations(explored):
    n = len(explored[0])
    r = relation_instances(explored, list(POSITIONAL_RELATIONS))
    assert set(r.direction) == {"positional"}
    by = {name: r[r.relation == name] for name in POSITIONAL_RELATIONS}
    assert len(by["prev_word"]) == n - 1 and (by["prev_word"].offset == -1).all()
    assert len(by["next_word"]) == n - 1 and (by["next_word"].offset == 1).all()
    assert len(by["self"]) == n and (by["self"].offset == 0).all()
    assert len(by["first_word"]) == n and (by["first_word"].tgt == 0).all()


def test_default_relations_exclude_root_and_punct():
    data = load_dataset(f"ud:{TINY}")
    r = relation_instances(data)
    rels = set(r.relation)
    assert {"nsubj", "amod", "det", "obj", "iobj"} <= rels
    assert not {"root", "punct"} & rels
    assert set(POSITIONAL_RELATIONS) <= rels
    # every arc with that base label shows up once per direction
    n_nsubj = sum(s.deprels.count("nsubj") for s in data)
    assert len(r[(r.relation == "nsubj") & (r.direction == "dep_to_head")]) == n_nsubj
    assert len(r[(r.relation == "nsubj") & (r.direction == "head_to_dep")]) == n_nsubj


def test_full_label_relation():
    data = load_dataset(f"ud:{TINY}")
    r = relation_instances(data, ["nsubj:pass"], directions=("dep_to_head",))
    assert r[["sentence_id", "src", "tgt"]].values.tolist() == [["tiny-4", 1, 3]]


def test_unknown_relation_lists_present_ones(explored):
    with pytest.raises(ProbekitError) as e:
        relation_instances(explored, ["nmod"])
    msg = str(e.value)
    assert "'nmod'" in msg and "nsubj" in msg and "amod" in msg and "prev_word" in msg


def test_unknown_direction(explored):
    with pytest.raises(ProbekitError, match="direction"):
        relation_instances(explored, ["nsubj"], directions=("sideways",))


def test_sentences_without_trees_only_get_positional():
    data = load_dataset("template:bank_sense?n=8")
    r = relation_instances(data)
    assert set(r.direction) == {"positional"}


def test_trees_without_relation_labels_give_no_word_pair_rows():
    from probekit.data import Dataset, Sentence

    labelled = Sentence(id="a", words=("Dogs", "bark"), heads=(1, -1), deprels=("nsubj", "root"))
    unlabelled = Sentence(id="b", words=("Cats", "sleep"), heads=(1, -1))
    r = relation_instances(Dataset("mixed", (unlabelled, labelled)), ["nsubj"], directions="dep_to_head")
    assert r[["sentence_id", "src", "tgt"]].values.tolist() == [["a", 0, 1]]
