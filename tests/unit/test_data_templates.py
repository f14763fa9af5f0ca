"""Generated datasets (`template:` scheme): determinism, gold arcs by word class, minimal pairs."""

from __future__ import annotations

from collections import Counter

import pytest

from probekit.data import TEMPLATES, load_dataset
from probekit.data.templates import vocab
from probekit.errors import ProbekitError

V = vocab()
NOUNS = {x[num] for x in V["nouns"] for num in ("sg", "pl")}
VERBS = {x[form] for x in V["verbs"] for form in ("sg", "pl", "past")}
ADJS = {x["word"] for x in V["adjectives"]}


def test_vocabulary_has_breadth():
    assert len(V["nouns"]) >= 30 and len(V["verbs"]) >= 30 and len(V["adjectives"]) >= 30
    assert all(x["sg"] != x["pl"] for x in V["nouns"])
    assert all(len({x["sg"], x["pl"], x["past"]}) == 3 for x in V["verbs"])


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_deterministic_for_a_seed_and_different_for_another(name):
    a = load_dataset(f"template:{name}?n=40", seed=1)
    b = load_dataset(f"template:{name}?n=40", seed=1)
    c = load_dataset(f"template:{name}?n=40", seed=2)
    assert len(a) == 40
    assert list(a) == list(b)
    assert list(a) != list(c)
    texts = [getattr(x, "good", None) or x.text for x in a]
    assert len(set(texts)) == len(texts)  # no duplicates to leak across splits


def test_default_size_and_n_parameter():
    assert len(load_dataset("template:svo_adj")) == 200
    assert len(load_dataset("template:svo_adj?n=7")) == 7


@pytest.mark.parametrize(
    "spec", ["template:nope", "template:svo_adj?size=3", "template:svo_adj?n=0", "template:svo_adj?n=x"]
)
def test_bad_template_specs(spec):
    with pytest.raises(ProbekitError) as e:
        load_dataset(spec)
    if "nope" in spec:
        assert "svo_adj" in str(e.value) and "bank_sense" in str(e.value)


def test_svo_adj_arcs_point_to_the_right_word_classes():
    data = load_dataset("template:svo_adj?n=150", seed=3)
    seen = Counter()
    for s in data:
        assert s.heads.count(-1) == 1 and s.words[s.heads.index(-1)].lower() in VERBS
        for i, (h, rel) in enumerate(zip(s.heads, s.deprels, strict=True)):
            word, head = s.words[i].lower(), s.words[h].lower() if h >= 0 else None
            seen[rel] += 1
            if rel in ("nsubj", "obj"):
                assert word in NOUNS and head in VERBS and s.upos[i] == "NOUN"
            elif rel == "amod":
                assert word in ADJS and head in NOUNS and h > i
            elif rel == "det":
                assert word == "the" and head in NOUNS and h > i
            elif rel == "punct":
                assert word == "." and head in VERBS
        roles = s.labels["role"]
        assert roles.count("subj") == 1 and roles.count("obj") == 1
        assert s.deprels[roles.index("subj")] == "nsubj" and s.deprels[roles.index("obj")] == "obj"
        for i, num in enumerate(s.labels["number"]):
            assert (num is not None) == (s.upos[i] == "NOUN")
    assert seen["amod"] > 50 and seen["nsubj"] == seen["obj"] == 150  # with and without adjectives
    n_adj = Counter(s.deprels.count("amod") for s in data)
    assert n_adj[0] > 0 and n_adj[2] > 0


def test_svo_present_verbs_agree_with_subject():
    for s in load_dataset("template:svo_adj?n=100"):
        if s.labels["tense"] == "present":
            subj = s.labels["role"].index("subj")
            verb = s.heads[subj]
            forms = next(x for x in V["verbs"] if s.words[verb] in (x["sg"], x["pl"]))
            assert s.words[verb] == forms["sg" if s.labels["number"][subj] == "Sing" else "pl"]


def test_agreement_pairs_differ_only_in_the_verb():
    data = load_dataset("template:agreement?n=120", seed=5)
    assert {p.paradigm for p in data} == {"agreement_none", "agreement_pp", "agreement_rc"}
    cells = Counter((p.labels["attractor"], p.labels["number"]) for p in data)
    assert set(cells.values()) == {20}  # balanced: 3 attractors x 2 numbers
    for p in data:
        good, bad = p.good.split(), p.bad.split()
        assert len(good) == len(bad)
        diff = [i for i, (g, b) in enumerate(zip(good, bad, strict=True)) if g != b]
        assert diff == [p.labels["verb_index"]]
        assert good[diff[0]] == p.good_word and bad[diff[0]] == p.bad_word
        assert p.good.startswith(p.prefix + " " + p.good_word)
        assert p.bad.startswith(p.prefix + " " + p.bad_word)
        assert p.subject_index == 1
        if p.labels["attractor"] != "none":
            assert p.labels["attractor_number"] != p.labels["number"]


def test_agreement_verbs_match_subject_number():
    sg = {"is", "was", "has"} | {x["sg"] for x in V["intransitive_verbs"]}
    pl = {"are", "were", "have"} | {x["pl"] for x in V["intransitive_verbs"]}
    for p in load_dataset("template:agreement?n=60"):
        assert p.good_word in (sg if p.labels["number"] == "sg" else pl)
        assert p.bad_word in (pl if p.labels["number"] == "sg" else sg)


def test_agreement_sentences_match_pairs_and_have_nsubj_arcs():
    pairs = load_dataset("template:agreement?n=30", seed=4)
    sents = load_dataset("template:agreement_sentences?n=30", seed=4)
    for p, s in zip(pairs, sents, strict=True):
        assert s.id == p.id and s.text == p.good
        subj = s.labels["subject_index"]
        assert s.deprels[subj] == "nsubj" and s.labels["number"][subj] in ("Sing", "Plur")
        assert s.heads[subj] in (
            p.labels["verb_index"],
            p.labels["verb_index"] + 1,
        )  # verb, or predicate after cop/aux
        if p.labels["attractor"] == "rc":
            assert "acl:relcl" in s.deprels_full


def test_bank_sense_labels():
    data = load_dataset("template:bank_sense?n=80", seed=0)
    cells = Counter((s.labels["bank_sense"], s.labels["cue_position"]) for s in data)
    assert cells == {
        ("river", "before"): 20,
        ("river", "after"): 20,
        ("finance", "before"): 20,
        ("finance", "after"): 20,
    }
    for s in data:
        b, c = s.labels["bank_index"], s.labels["cue_index"]
        assert s.words[b] == "bank" and s.words.count("bank") == 1
        assert (c < b) == (s.labels["cue_position"] == "before")
        assert s.labels["sense"][b] == s.labels["bank_sense"]
        assert sum(x is not None for x in s.labels["sense"]) == 1
    assert len({s.labels["cue_word"] for s in data}) >= 20


def test_bank_sense_too_many_is_an_error():
    with pytest.raises(ProbekitError, match="at most"):
        load_dataset("template:bank_sense?n=100000")


# which part of speech each relation's dependent and head have in the agreement sentences
AGREEMENT_ARCS = {
    "det": ({"DET"}, {"NOUN"}),
    "nsubj": ({"NOUN"}, {"ADJ", "VERB"}),
    "case": ({"ADP"}, {"NOUN"}),
    "nmod": ({"NOUN"}, {"NOUN"}),
    "obj": ({"PRON"}, {"VERB"}),
    "acl": ({"VERB"}, {"NOUN"}),
    "cop": ({"AUX"}, {"ADJ"}),
    "aux": ({"AUX"}, {"VERB"}),
    "advmod": ({"ADV"}, {"VERB"}),
    "punct": ({"PUNCT"}, {"ADJ", "VERB"}),
}


def test_agreement_sentence_arcs_point_to_the_right_word_classes():
    for s in load_dataset("template:agreement_sentences?n=90", seed=2):
        assert s.heads.count(-1) == 1 and s.upos[s.heads.index(-1)] in ("ADJ", "VERB")
        for i, (h, rel) in enumerate(zip(s.heads, s.deprels, strict=True)):
            if h < 0:
                continue
            dep_pos, head_pos = AGREEMENT_ARCS[rel]
            assert s.upos[i] in dep_pos and s.upos[h] in head_pos, (s.text, s.words[i], rel, s.words[h])
