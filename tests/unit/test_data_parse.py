"""Raw text parsed with spaCy (`text:` scheme, `parse_text`), labels mapped to UD."""

from __future__ import annotations

import pytest

from probekit.data import load_dataset, parse_text
from probekit.errors import ProbekitError

pytest.importorskip("spacy", reason="spaCy is an optional dependency (pip install 'probekit-mi[parse]')")


@pytest.fixture(scope="module")
def explored():
    """Parse once per module: loading the spaCy pipeline takes a couple of seconds."""
    return parse_text(
        "The curious cat explored the mysterious room. The bank of the river was steep.", id_prefix="t"
    )


def test_seed_sentence_gets_ud_arcs(explored):
    s = explored[0]
    assert s.id == "t#1" and s.text == "The curious cat explored the mysterious room."
    assert s.words == ("The", "curious", "cat", "explored", "the", "mysterious", "room", ".")
    arcs = {
        (s.words[i], rel, s.words[h])
        for i, (h, rel) in enumerate(zip(s.heads, s.deprels, strict=True))
        if h >= 0
    }
    assert {
        ("cat", "nsubj", "explored"),
        ("room", "obj", "explored"),
        ("curious", "amod", "cat"),
        ("mysterious", "amod", "room"),
    } <= arcs
    assert s.upos[2] == "NOUN" and s.labels["number"][2] == "Sing"


def test_prepositional_phrase_is_re_headed(explored):
    s = explored[1]
    i_of, i_river, i_bank = s.words.index("of"), s.words.index("river"), s.words.index("bank")
    assert (s.deprels[i_of], s.heads[i_of]) == ("case", i_river)
    assert (s.deprels[i_river], s.heads[i_river]) == ("nmod", i_bank)


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Dogs bark.\n\nCats   sleep all day.\n", encoding="utf-8")
    data = load_dataset(f"text:{path}")
    assert len(data) == 2 and all(" " not in w for s in data for w in s.words)
    assert data[1].words[:2] == ("Cats", "sleep")
    with pytest.raises(ProbekitError, match="not found"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")
