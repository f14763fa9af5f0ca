"""Alignment, word-level attention and capture on tiny random-init models."""

from __future__ import annotations

import types

import numpy as np
import pytest

import probekit as pk
from probekit.activations import align as align_module
from probekit.activations.align import align, align_many, as_sentences, sentence_from_text, word_attention
from probekit.data.schema import Sentence

TRICKY = '"I don\'t know," said the U.S. mother-in-law of 1,000 cats.'


def _decoded_words(model, enc):
    tok = model.tokenizer
    out = []
    for a, b in enc.word_spans:
        tokens = tok.convert_ids_to_tokens(list(enc.input_ids[a:b]))
        out.append(tok.convert_tokens_to_string(tokens).replace(" ", ""))
    return out


def test_alignment_is_exact_on_tricky_words(tiny_model):
    sent = sentence_from_text(TRICKY, id="tricky")
    assert sent.words == (
        '"',
        "I",
        "don't",
        "know",
        ",",
        '"',
        "said",
        "the",
        "U.S.",
        "mother-in-law",
        "of",
        "1,000",
        "cats",
        ".",
    )
    enc = align(tiny_model, sent)
    decoded = _decoded_words(tiny_model, enc)
    expected = [w.lower() if not tiny_model.is_causal else w for w in sent.words]  # MiniLM is uncased
    assert decoded == expected
    # spans tile the sequence: special tokens only at the ends
    specials = enc.special_positions()
    assert specials == ([0] if tiny_model.is_causal else [0, enc.n_tokens - 1])
    flat = [t for a, b in enc.word_spans for t in range(a, b)]
    assert flat == list(range(enc.word_spans[0][0], enc.word_spans[-1][1]))


def test_causal_sink_is_endoftext_and_never_a_word(tiny_llama):
    enc = align(tiny_llama, sentence_from_text("The cat sat.", id="x"))
    assert tiny_llama.tokenizer.convert_ids_to_tokens(enc.input_ids[0]) == "<|endoftext|>"
    assert enc.word_spans[0][0] == 1


def test_space_convention_for_bpe(tiny_llama):
    enc = align(tiny_llama, sentence_from_text("The cat sat.", id="x"))
    toks = [tiny_llama.tokenizer.convert_ids_to_tokens(list(enc.input_ids[a:b])) for a, b in enc.word_spans]
    assert toks == [["The"], ["Ġcat"], ["Ġsat"], ["."]]


def test_word_attention_sum_to_and_mean_from():
    # 1 layer, 1 head, tokens: [sink, w0a, w0b, w1]
    pattern = np.array(
        [[[[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0.2, 0.3, 0.5, 0], [0.1, 0.2, 0.3, 0.4]]]], dtype=np.float32
    )
    sent = Sentence(id="s", words=("ab", "c"))
    from probekit.activations.align import Encoded

    enc = Encoded(sentence=sent, input_ids=(0, 1, 2, 3), word_spans=((1, 3), (3, 4)))
    att, mass = word_attention(pattern, enc)
    # from w0 = mean of token rows 1 and 2; to w0 = sum of columns 1 and 2
    np.testing.assert_allclose(att[0, 0, 0], [(0.5 + 0.3 + 0.5) / 2, 0.0], atol=1e-6)
    np.testing.assert_allclose(att[0, 0, 1], [0.2 + 0.3, 0.4], atol=1e-6)
    np.testing.assert_allclose(mass[0, 0], [(0.5 + 0.2) / 2, 0.1], atol=1e-6)
    renorm, _ = word_attention(pattern, enc, renormalize=True)
    np.testing.assert_allclose(renorm.sum(-1), 1.0, atol=1e-6)


def test_capture_rows_sum_to_one_and_respect_causality(tiny_model, cache_dir):
    sents = ["The curious cat explored the mysterious room.", TRICKY, "Dogs bark."]
    cap = pk.capture(
        tiny_model,
        sents,
        resid=("resid_pre", "resid_post"),
        attention=True,
        cache_dir=cache_dir,
        progress=False,
        batch_size=2,
    )
    assert len(cap) == 3 and len(cap.index) == int(cap.n_words.sum())
    assert cap.index.names == ["sentence_id", "word_id", "word"]
    assert cap.stream(0).shape == (int(cap.n_words.sum()), tiny_model.d_model)
    assert cap.stream_layers == list(range(tiny_model.n_layers + 1))
    for i in range(3):
        att, mass = cap.attention(i), cap.special_mass(i)
        assert att.shape == (tiny_model.n_layers, tiny_model.n_heads, cap.n_words[i], cap.n_words[i])
        np.testing.assert_allclose(att.sum(-1) + mass, 1.0, atol=1e-5)
        if tiny_model.is_causal:
            assert np.all(np.triu(att, k=1) == 0.0)
    renorm = pk.capture(
        tiny_model, sents, resid=(), attention=True, renormalize=True, cache_dir=cache_dir, progress=False
    )
    np.testing.assert_allclose(renorm.attention(1).sum(-1), 1.0, atol=1e-5)


def test_batched_capture_matches_single_sentence_runs(tiny_model, cache_dir):
    sents = as_sentences(["The curious cat explored the mysterious room.", TRICKY, "Dogs bark loudly ."])
    batched = pk.capture(
        tiny_model, sents, resid=("resid_post",), cache_dir=cache_dir, progress=False, batch_size=3
    )
    for i, s in enumerate(sents):
        single = pk.capture(
            tiny_model, [s], resid=("resid_post",), cache_dir=cache_dir, progress=False, batch_size=1
        )
        rows = batched.sentence_rows(i)
        np.testing.assert_allclose(
            batched.resid("resid_post", 1)[rows], single.resid("resid_post", 1), atol=1e-5
        )
        np.testing.assert_allclose(batched.attention(i), single.attention(0), atol=1e-5)


def test_cached_capture_equals_fresh_bit_for_bit(tiny_model, cache_dir):
    sents = ["The curious cat explored the mysterious room.", TRICKY]
    first = pk.capture(tiny_model, sents, resid=("resid_post",), cache_dir=cache_dir, progress=False)
    again = pk.capture(tiny_model, sents, resid=("resid_post",), cache_dir=cache_dir, progress=False)
    fresh = pk.capture(tiny_model, sents, resid=("resid_post",), cache=False, progress=False)
    assert again.path == first.path and fresh.key == first.key
    for layer in range(tiny_model.n_layers):
        assert np.array_equal(
            np.asarray(first.resid("resid_post", layer)), np.asarray(fresh.resid("resid_post", layer))
        )
    assert np.array_equal(first.attention(1), fresh.attention(1))


def test_cache_key_changes_with_data_settings_and_weights(tiny_model, cache_dir):
    a = pk.capture(tiny_model, ["The cat sat ."], cache_dir=cache_dir, progress=False)
    b = pk.capture(tiny_model, ["The dog sat ."], cache_dir=cache_dir, progress=False)
    c = pk.capture(tiny_model, ["The cat sat ."], pool="mean", cache_dir=cache_dir, progress=False)
    other = pk.load_model(f"random:{tiny_model.name}", seed=1)
    d = pk.capture(other, ["The cat sat ."], cache_dir=cache_dir, progress=False)
    assert len({a.key, b.key, c.key, d.key}) == 4


def test_stop_at_layer_only_captures_requested_layers(tiny_llama, cache_dir):
    cap = pk.capture(
        tiny_llama, ["The cat sat ."], layers=[0], resid=("resid_post",), cache_dir=cache_dir, progress=False
    )
    assert cap.layers == [0] and cap.attention(0).shape[0] == 1
    with pytest.raises(pk.ProbekitError, match="was not captured"):
        cap.resid("resid_post", 1)


def test_pooling_choices(tiny_llama, cache_dir):
    words = ["mother-in-law", "sat"]
    first = pk.capture(
        tiny_llama,
        [words],
        pool="first",
        resid=("resid_post",),
        attention=False,
        cache_dir=cache_dir,
        progress=False,
    )
    last = pk.capture(
        tiny_llama,
        [words],
        pool="last",
        resid=("resid_post",),
        attention=False,
        cache_dir=cache_dir,
        progress=False,
    )
    assert not np.allclose(first.resid("resid_post", 0)[0], last.resid("resid_post", 0)[0])
    np.testing.assert_array_equal(
        first.resid("resid_post", 0)[1], last.resid("resid_post", 0)[1]
    )  # one-token word


def test_check_attention_recomputes_patterns(tiny_model):
    df = pk.check_attention(tiny_model, "The curious cat explored the mysterious room.")
    assert len(df) == tiny_model.n_layers
    assert df.max_abs_diff.max() <= 1e-5


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "no sentences"),
        ([("The cat sat.", ["The", "dog", "sat", "."])], "does not match the text"),
        ([("The cat sat.", ["The", "cat"])], "stop before the end"),
        ([["The", ""]], "non-empty strings"),
    ],
)
def test_bad_input_gives_one_clear_error(tiny_llama, bad, match):
    with pytest.raises(pk.ProbekitError, match=match):
        pk.capture(tiny_llama, bad, progress=False, cache=False)


def test_sentence_longer_than_context(tiny_llama):
    with pytest.raises(pk.ProbekitError, match=r"longer than .* context"):
        pk.capture(tiny_llama, [["word"] * (tiny_llama.n_ctx + 5)], progress=False, cache=False)


def test_unknown_model_lists_known_names():
    with pytest.raises(pk.ProbekitError, match="smollm2-135m, minilm-l6"):
        pk.load_model("gpt-17")
    with pytest.raises(pk.ProbekitError, match="does not exist"):
        pk.load_model("./no/such/dir")


def test_random_init_is_reproducible_and_differs():
    a = pk.load_model("random:tiny-bert", seed=3)
    b = pk.load_model("random:tiny-bert", seed=3)
    c = pk.load_model("random:tiny-bert", seed=4)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert (
        pk.load_model("random:tiny-bert", seed=0).fingerprint
        != pk.load_model("tiny-bert", seed=0).fingerprint
    )


def test_model_wrapper_fields(tiny_llama, tiny_bert):
    assert (tiny_llama.n_layers, tiny_llama.n_heads, tiny_llama.n_kv_heads, tiny_llama.d_head) == (
        2,
        4,
        2,
        16,
    )
    assert tiny_llama.is_causal and not tiny_bert.is_causal
    assert tiny_bert.n_kv_heads == tiny_bert.n_heads


def test_cli_models_lists_builtins(capsys):
    from probekit.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert", "random:<name>"):
        assert name in out


def test_a_too_long_sentence_names_what_the_user_can_do(tiny_bert):
    # issue 15: the fix used to suggest `max_tokens`, which no command takes
    words = ["word"] * (tiny_bert.n_ctx + 5)
    with pytest.raises(pk.ProbekitError, match="longer than") as err:
        align(tiny_bert, Sentence(id="long", words=tuple(words)))
    assert "max_tokens" not in str(err.value) and "--max-sentences" in err.value.fix


ODD_WORDS = ("[CLS]", "<|endoftext|>", "naïve", "Straße", "😀", "...", "n't", "1,000")


def _tokenizer_align(model, sentence):
    """`align` as it was: the tokenizer's own call on one sentence's words."""
    pieces = align_module._word_pieces(model, sentence)
    per_word = [list(ids) for ids in model.tokenizer(pieces, add_special_tokens=False).input_ids]
    return align_module._assemble(model, sentence, per_word)


def test_align_many_gives_the_ids_the_tokenizer_gives(tiny_model, shared_data, monkeypatch):
    """One backend call per chunk of sentences (`encode_words`) gives every word the ids the tokenizer's
    own call gives, across chunk boundaries (a chunk of 7 here), on 300 EWT sentences and on words that
    spell special tokens or carry non-ASCII characters."""
    sents = pk.load_dataset(f"ud:{shared_data}/ud-en-ewt/en_ewt-ud-dev.conllu", max_sentences=300).sentences
    sents = [*sents, Sentence(id="odd", words=ODD_WORDS)]
    monkeypatch.setattr(align_module, "ALIGN_CHUNK", 7)
    assert list(align_many(tiny_model, sents)) == [_tokenizer_align(tiny_model, s) for s in sents]


def test_encode_words_calls_the_backend_only_in_the_tokenizers_default_state(tiny_model, monkeypatch):
    """In the default state the words go straight to the Rust backend (transformers' call is never
    made); with truncation switched on in the backend, transformers' call is made instead, and it
    switches truncation off again, so no word is cut short either way."""
    import copy

    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    tok = copy.deepcopy(tiny_model.tokenizer)
    words = [" mother-in-law", "Straße", "[SEP]", " 1,000"]
    expected = [list(ids) for ids in tok(words, add_special_tokens=False).input_ids]
    assert max(map(len, expected)) > 1

    def no_call(self, *args, **kwargs):
        raise AssertionError("transformers' tokenizer call was made")

    with monkeypatch.context() as patched:
        patched.setattr(PreTrainedTokenizerBase, "__call__", no_call)
        assert align_module.encode_words(tok, words) == expected

    tok.backend_tokenizer.enable_truncation(max_length=1)
    assert align_module.encode_words(tok, words) == expected
    assert tok.backend_tokenizer.truncation is None


def test_encode_words_calls_any_other_tokenizer():
    """A tokenizer that is not a transformers fast tokenizer is simply called."""

    class Letters:
        def __call__(self, pieces, add_special_tokens):
            assert add_special_tokens is False
            return types.SimpleNamespace(input_ids=[tuple(ord(c) for c in p) for p in pieces])

    assert align_module.encode_words(Letters(), ["ab", "c"]) == [[97, 98], [99]]
