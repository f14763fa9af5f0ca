"""CoNLL-U loading (`ud:` scheme): remapping heads past multi-word tokens and empty nodes, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from probekit.data import load_conllu, load_dataset
from probekit.errors import ProbekitError

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny.conllu"

GOOD_LINES = [
    "# sent_id = s1",
    "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_",
    "2\tcat\tcat\tNOUN\tNN\tNumber=Sing\t3\tnsubj\t_\t_",
    "3\tslept\tsleep\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No",
    "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_",
]


def write(tmp_path, lines, name="x.conllu"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_tiny_fixture_loads():
    data = load_dataset(f"ud:{TINY}")
    assert len(data) == 6
    assert [s.id for s in data][:5] == ["tiny-1", "tiny-2", "tiny-3", "tiny-4", "tiny-5"]
    s = data[0]
    assert s.words == ("The", "curious", "cat", "explored", "the", "mysterious", "room", ".")
    assert s.heads == (2, 2, 3, -1, 6, 6, 3, 3)
    assert s.deprels == ("det", "amod", "nsubj", "root", "det", "amod", "obj", "punct")
    assert s.upos[2] == "NOUN"
    assert s.text == "The curious cat explored the mysterious room."
    assert s.labels["number"][2] == "Sing" and s.labels["number"][0] is None


def test_multiword_token_is_skipped_and_heads_remapped():
    s = load_dataset(f"ud:{TINY}")[1]  # "The dogs don't eat bones." with 3-4 don't
    assert s.words == ("The", "dogs", "do", "n't", "eat", "bones", ".")
    assert s.heads == (1, 4, 4, 4, -1, 4, 4)  # CoNLL heads 2,5,5,5,0,5,5 -> 0-based, root -1
    assert s.space_after[2] is False  # inside the range "don't"
    assert s.space_after[3] is True  # the range's own SpaceAfter (default yes)
    assert s.space_after[5] is False  # SpaceAfter=No on "bones"
    assert s.text == "The dogs don't eat bones."


def test_empty_node_is_skipped():
    s = load_dataset(f"ud:{TINY}")[2]  # "Mary likes tea and John coffee." with 5.1
    assert s.words == ("Mary", "likes", "tea", "and", "John", "coffee", ".")
    assert "likes" not in s.words[2:]
    assert s.heads == (1, -1, 1, 4, 2, 4, 1)


def test_base_and_full_deprels():
    s = load_dataset(f"ud:{TINY}")[3]
    assert s.deprels_full[1] == "nsubj:pass" and s.deprels[1] == "nsubj"
    assert s.deprels_full[2] == "aux:pass" and s.deprels[2] == "aux"


def test_sentence_id_fallback_and_max_sentences():
    data = load_dataset(f"ud:{TINY}")
    assert data[5].id == f"{TINY}#6"
    assert [s.id for s in load_dataset(f"ud:{TINY}", max_sentences=2)] == ["tiny-1", "tiny-2"]


def test_sentence_without_tree(tmp_path):
    lines = ["1\tHi\thi\tINTJ\tUH\t_\t_\t_\t_\t_", "2\tthere\tthere\tADV\tRB\t_\t_\t_\t_\t_"]
    (s,) = load_conllu(write(tmp_path, lines))
    assert s.heads is None and s.deprels is None and s.words == ("Hi", "there")


def test_missing_file(tmp_path):
    with pytest.raises(ProbekitError, match="not found") as e:
        load_dataset(f"ud:{tmp_path / 'nope.conllu'}")
    assert "nope.conllu" in str(e.value)


def test_wrong_column_count_names_file_and_line(tmp_path):
    lines = list(GOOD_LINES)
    lines[2] = "2\tcat\tcat\tNOUN\tNN\tNumber=Sing\t3\tnsubj"  # 8 columns, line 3
    path = write(tmp_path, lines)
    with pytest.raises(ProbekitError, match="8 tab-separated columns") as e:
        load_conllu(path)
    assert f"{path}:3" in str(e.value)


def test_space_separated_line_is_malformed(tmp_path):
    lines = list(GOOD_LINES)
    lines[1] = "1  The  the  DET  DT  _  2  det  _  _"  # the conllu library would accept this
    path = write(tmp_path, lines)
    with pytest.raises(ProbekitError, match="columns") as e:
        load_conllu(path)
    assert f"{path}:2" in str(e.value)


def test_non_integer_head(tmp_path):
    lines = list(GOOD_LINES)
    lines[4] = "4\t.\t.\tPUNCT\t.\t_\tthree\tpunct\t_\t_"
    path = write(tmp_path, lines)
    with pytest.raises(ProbekitError, match="HEAD 'three'") as e:
        load_conllu(path)
    assert f"{path}:5" in str(e.value)


def test_bad_id(tmp_path):
    lines = list(GOOD_LINES)
    lines[3] = "x\tslept\tsleep\tVERB\tVBD\t_\t0\troot\t_\t_"
    with pytest.raises(ProbekitError, match="ID 'x'") as e:
        load_conllu(write(tmp_path, lines))
    assert ":4" in str(e.value)


def test_skipped_word_id(tmp_path):
    lines = list(GOOD_LINES)
    lines[3] = "5\tslept\tsleep\tVERB\tVBD\t_\t0\troot\t_\t_"
    with pytest.raises(ProbekitError, match="word ID 5 where 3"):
        load_conllu(write(tmp_path, lines))


def test_head_out_of_range_names_sentence_and_line(tmp_path):
    lines = list(GOOD_LINES)
    lines[2] = "2\tcat\tcat\tNOUN\tNN\t_\t9\tnsubj\t_\t_"
    path = write(tmp_path, lines)
    with pytest.raises(ProbekitError, match="HEAD 9") as e:
        load_conllu(path)
    assert f"{path}:3" in str(e.value) and "'s1'" in str(e.value)


def test_cycle_names_sentence_and_file(tmp_path):
    lines = list(GOOD_LINES)
    lines[1] = "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_"
    lines[2] = "2\tcat\tcat\tNOUN\tNN\t_\t1\tnsubj\t_\t_"  # 1 <-> 2
    path = write(tmp_path, lines)
    with pytest.raises(ProbekitError, match="cycle") as e:
        load_conllu(path)
    assert str(path) in str(e.value) and "'s1'" in str(e.value)


def test_error_in_second_sentence_reports_its_line(tmp_path):
    lines = [*GOOD_LINES, "", "# sent_id = s2", "1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_"]
    path = write(tmp_path, lines)
    with pytest.raises(ProbekitError) as e:
        load_conllu(path)
    assert f"{path}:8" in str(e.value)


def test_partial_tree_is_an_error(tmp_path):
    lines = list(GOOD_LINES)
    lines[4] = "4\t.\t.\tPUNCT\t.\t_\t_\t_\t_\t_"
    with pytest.raises(ProbekitError, match="HEAD _"):
        load_conllu(write(tmp_path, lines))


def test_empty_file(tmp_path):
    with pytest.raises(ProbekitError, match="no sentences"):
        load_conllu(write(tmp_path, ["# just a comment"]))
