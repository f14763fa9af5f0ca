"""Words <-> tokens: encode a sentence so every token belongs to exactly one word (or to no word).

Everything downstream in probekit works on *words*. A model sees sub-word tokens, so we encode each
word on its own and concatenate:

- BPE tokenizers with a leading-space convention (GPT-2, Llama/SmolLM2): a word preceded by a space in
  the running text is encoded as ``" " + word``; the first word and words glued to the previous one
  (``space_after=False``, e.g. "cat" + ".") are encoded without the space. Causal models get the sink
  token in front (see `probekit.models`); it belongs to no word.
- WordPiece tokenizers (BERT): each word is encoded as a pre-split word (``##`` continuations stay in
  the word) and the sequence is framed by ``[CLS] ... [SEP]``, which belong to no word.

Encoding word by word makes the alignment exact by construction: "don't", "U.S.", "mother-in-law",
numbers and quotes map to exactly their own tokens. The price is that a BPE merge across a word
boundary with no space (UD splits "don't" into "do" + "n't") is not made; the tokens are still ones
the model knows.

Pooling residuals over a word's tokens: ``last`` (default for causal models: the last sub-token has
seen the whole word), ``first`` (default for encoders, as in Clark et al. 2019 and most BERT probing
work) or ``mean``.

Word-level attention follows Clark et al. 2019 ("What Does BERT Look At?", arXiv:1906.04341):
attention *to* a word is the **sum** over its tokens, attention *from* a word the **mean** over its
tokens, and special/sink tokens are dropped. Each row then sums to 1 minus the mass that went to the
dropped tokens (returned as ``special_mass``); ``renormalize=True`` rescales rows to sum to 1.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from probekit.data.schema import Sentence
from probekit.errors import ProbekitError

POOLING = ("first", "last", "mean")


@dataclass(frozen=True)
class Encoded:
    """One sentence as token ids, with each word's token span ``[start, end)`` into ``input_ids``."""

    sentence: Sentence
    input_ids: tuple[int, ...]
    word_spans: tuple[tuple[int, int], ...]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def special_positions(self) -> list[int]:
        in_word = np.zeros(self.n_tokens, dtype=bool)
        for a, b in self.word_spans:
            in_word[a:b] = True
        return [int(i) for i in np.flatnonzero(~in_word)]


# --------------------------------------------------------------------------------------------------
# turning user input into Sentences


def sentence_from_text(text: str, words: list[str] | None = None, id: str = "s0") -> Sentence:
    """Make a `Sentence` from running text.

    Without ``words`` the text is split into words and punctuation (a simple regex; use
    ``probekit.data`` / spaCy for real tokenisation). With ``words`` they must tile the text exactly
    (ignoring whitespace), and the spaces between them are read off the text.
    """
    if not isinstance(text, str) or not text.strip():
        raise ProbekitError("empty sentence text", where=f"sentence {id!r}", fix="drop empty sentences")
    if words is None:
        words = [m.group(0) for m in re.finditer(r"\S+", text)]
        words = [w for chunk in words for w in _split_punct(chunk)]
    spaces, pos = [], 0
    for i, w in enumerate(words):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text[pos : pos + len(w)] != w:
            raise ProbekitError(
                f"word {i} {w!r} does not match the text at character {pos} "
                f"({text[pos : pos + len(w) + 5]!r}...)",
                where=f"sentence {id!r}",
                fix="the word list must spell out the sentence in order, e.g. ['The', 'cat', 'sat', '.']",
            )
        pos += len(w)
        spaces.append(pos < len(text) and text[pos].isspace())
    if text[pos:].strip():
        raise ProbekitError(
            f"the words stop before the end of the text ({text[pos:]!r} is left)",
            where=f"sentence {id!r}",
            fix="add the missing words",
        )
    return Sentence(id=id, words=tuple(words), space_after=tuple(spaces), source="text")


def _split_punct(chunk: str) -> list[str]:
    """Split leading/trailing punctuation off a whitespace-delimited chunk.

    ``"(cat)."`` -> ``"("``, ``"cat"``, ``")"``, ``"."``.
    """
    lead, trail = [], []  # type: list[str], list[str]
    while len(chunk) > 1 and not chunk[0].isalnum():
        lead.append(chunk[0])
        chunk = chunk[1:]
    while len(chunk) > 1 and not chunk[-1].isalnum() and not re.fullmatch(r"(?:[A-Za-z]\.)+", chunk):
        trail.insert(0, chunk[-1])
        chunk = chunk[:-1]
    return lead + [chunk] + trail  # noqa: RUF005 (kept: fingerprinted code)


def as_sentences(items) -> list[Sentence]:
    """Accept a Dataset, Sentences, word lists, ``(text, words)`` pairs or plain strings."""
    if items is None or isinstance(items, (str, Sentence)):
        items = [items] if items is not None else []
    items = list(getattr(items, "sentences", items))
    if not items:
        raise ProbekitError("no sentences were given", fix="pass at least one sentence (a word list or text)")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Sentence):
            out.append(item)
        elif isinstance(item, str):
            out.append(sentence_from_text(item, id=f"s{i}"))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(sentence_from_text(item[0], list(item[1]), id=f"s{i}"))
        elif isinstance(item, (list, tuple)):
            out.append(Sentence(id=f"s{i}", words=tuple(item), source="words"))
        else:
            raise ProbekitError(
                f"item {i} is a {type(item).__name__}, not a sentence",
                fix="pass Sentences, word lists, (text, words) pairs or strings",
            )
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise ProbekitError(
            f"sentence id {dup!r} occurs more than once", fix="give every sentence a unique id"
        )
    return out


# --------------------------------------------------------------------------------------------------
# encoding


def align(model, sentence: Sentence) -> Encoded:
    """Encode one sentence for ``model`` with an exact word -> token-span map.

    Each word is encoded on its own (with its leading space for BPE tokenizers), so every token
    belongs to exactly one word; causal models get the sink token in front, encoders [CLS] ... [SEP].
    `align_many` does the same for many sentences at once, faster.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama", device="cpu")
    >>> enc = pk.align(model, pk.load_dataset("seed:explored")[0])
    >>> enc.input_ids[0] == model.sink_token_id, enc.word_spans[:2]
    (True, ((1, 2), (2, 3)))
    """
    return next(align_many(model, [sentence]))


#: sentences whose words go to the tokenizer in one call (bounds the memory of one call's strings)
ALIGN_CHUNK = 1024


def align_many(model, sentences: Iterable[Sentence]) -> Iterator[Encoded]:
    """`align` every sentence, in order: the words of up to `ALIGN_CHUNK` sentences are encoded in one
    tokenizer call (`encode_words`), then cut back into sentences.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-bert", device="cpu")
    >>> sents = pk.load_dataset("seed:explored").sentences
    >>> list(align_many(model, sents)) == [pk.align(model, s) for s in sents]
    True
    """
    sentences = list(sentences)
    for start in range(0, len(sentences), ALIGN_CHUNK):
        chunk = sentences[start : start + ALIGN_CHUNK]
        pieces = [_word_pieces(model, s) for s in chunk]  # [sentence][word] text to encode
        word_ids = encode_words(model.tokenizer, [p for per_sentence in pieces for p in per_sentence])
        k = 0
        for sentence, per_sentence in zip(chunk, pieces, strict=True):
            yield _assemble(model, sentence, word_ids[k : k + len(per_sentence)])
            k += len(per_sentence)


def _word_pieces(model, sentence: Sentence) -> list[str]:
    """What each word is encoded as: with its leading space where a BPE tokenizer expects one."""
    space_prefix = model.space_prefix
    return [
        (" " + w) if (space_prefix and sentence.space_before(i)) else w for i, w in enumerate(sentence.words)
    ]


def encode_words(tokenizer, pieces: list[str]) -> list[list[int]]:
    """Each piece's token ids without special tokens: ``tokenizer(pieces, add_special_tokens=False)``'s
    ``input_ids``.

    For a Hugging Face fast tokenizer that does not override how it encodes, this is one call of its
    Rust backend (``backend_tokenizer.encode_batch``): what the tokenizer's own call runs after turning
    truncation and padding off and setting ``split_special_tokens``, so it is used only when the backend
    is already in that state; otherwise the tokenizer is called. It skips transformers' conversion of
    every word's encoding into Python lists, which made aligning about three times slower (MiniLM, the
    5,095 words of 256 EWT sentences: 82 ms per sentence-by-sentence call, 26 ms in one backend call;
    ``scripts/split_capture_overhead.py``). ``tests/unit/test_align_capture.py`` checks that both paths
    give the same ids.
    """
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if (
        isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._encode_plus is TokenizersBackend._encode_plus
    ):
        backend = tokenizer.backend_tokenizer
        if (
            backend.truncation is None
            and backend.padding is None
            and backend.encode_special_tokens == bool(tokenizer.split_special_tokens)
        ):
            return [e.ids for e in backend.encode_batch(pieces, add_special_tokens=False)]
    return [list(ids) for ids in tokenizer(pieces, add_special_tokens=False).input_ids]


def _assemble(model, sentence: Sentence, per_word: list[list[int]]) -> Encoded:
    """One sentence's `Encoded` from its words' token ids: the sink or [CLS] ... [SEP] added, and checked."""
    prefix = [model.sink_token_id] if model.is_causal else [model.cls_token_id]
    ids, spans = list(prefix), []
    for i, word_ids in enumerate(per_word):
        if not word_ids:
            raise ProbekitError(
                f"word {i} {sentence.words[i]!r} encodes to no tokens",
                where=f"sentence {sentence.id!r}",
                fix="remove characters the tokenizer drops",
            )
        spans.append((len(ids), len(ids) + len(word_ids)))
        ids.extend(word_ids)
    if not model.is_causal:
        ids.append(model.sep_token_id)
    if len(ids) > model.n_ctx:
        raise ProbekitError(
            f"the sentence is {len(ids)} tokens long, longer than {model.name}'s context of {model.n_ctx}",
            where=f"sentence {sentence.id!r}",
            fix="split this sentence into shorter ones or remove it from the data file (or keep only the "
            "sentences before it with --max-sentences)",
        )
    return Encoded(sentence=sentence, input_ids=tuple(int(x) for x in ids), word_spans=tuple(spans))


class PackedEncodings(Sequence[Encoded]):
    """Many sentences' encodings in two flat int32 arrays (token ids, word spans) with offsets: a
    `Sequence` of `Encoded`, each rebuilt on access.

    `capture` aligns every sentence up front (to sort them by length) and keeps the encodings for the
    whole run; as `Encoded` objects (tuples of Python ints) they took about 1.5 KB per sentence (15 MB for
    10,000 EWT sentences on MiniLM, measured with tracemalloc), packed they take about 0.3 KB.

    Examples
    --------
    >>> import probekit as pk
    >>> from probekit.activations.align import PackedEncodings
    >>> model = pk.load_model("tiny-llama", device="cpu")
    >>> sents = pk.load_dataset("seed:explored").sentences
    >>> packed = PackedEncodings.encode(model, sents)
    >>> packed[0] == pk.align(model, sents[0]), len(packed) == len(sents)
    (True, True)
    """

    def __init__(self, sentences: list[Sentence], ids, id_offsets, spans, span_offsets):
        self.sentences = sentences
        self.ids = ids  # [tokens of all sentences] int32
        self.spans = spans  # [words of all sentences, 2] int32: [start, end) into the sentence's tokens
        self.id_offsets, self.span_offsets = id_offsets, span_offsets  # [n_sentences + 1] int64 each
        self.n_tokens = np.diff(id_offsets)  # [n_sentences]
        self.n_words = np.diff(span_offsets)  # [n_sentences]

    @classmethod
    def encode(cls, model, sentences: list[Sentence]) -> PackedEncodings:
        """`align_many` every sentence, keeping only the packed arrays."""
        ids, spans = array("i"), array("i")  # compact growable buffers (4 bytes an entry)
        n_tokens, n_words = [], []
        for enc in align_many(model, sentences):
            ids.extend(enc.input_ids)
            spans.extend(x for span in enc.word_spans for x in span)
            n_tokens.append(enc.n_tokens)
            n_words.append(len(enc.word_spans))

        def offsets(sizes):
            return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

        return cls(
            sentences,
            np.frombuffer(ids, dtype=np.int32),
            offsets(n_tokens),
            np.frombuffer(spans, dtype=np.int32).reshape(-1, 2),
            offsets(n_words),
        )

    def __len__(self) -> int:
        return len(self.sentences)

    @overload
    def __getitem__(self, i: int) -> Encoded: ...

    @overload
    def __getitem__(self, i: slice) -> list[Encoded]: ...

    def __getitem__(self, i: int | slice) -> Encoded | list[Encoded]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]  # negative indices count from the end; out of range raises IndexError
        ids = self.ids[self.id_offsets[i] : self.id_offsets[i + 1]].tolist()
        spans = self.spans[self.span_offsets[i] : self.span_offsets[i + 1]].tolist()
        return Encoded(
            sentence=self.sentences[i], input_ids=tuple(ids), word_spans=tuple((a, b) for a, b in spans)
        )


def pad_batch(encoded: list[Encoded], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch: ``input_ids, attention_mask  # [batch, pos]``.

    Right padding keeps every real token at its own position (rotary/learned positions are unchanged)
    and, in a causal model, real tokens never see the pads that follow them.
    """
    width = max(e.n_tokens for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, e in enumerate(encoded):
        input_ids[b, : e.n_tokens] = torch.tensor(e.input_ids)
        attention_mask[b, : e.n_tokens] = 1
    return input_ids, attention_mask


# --------------------------------------------------------------------------------------------------
# token -> word maps


def pooling_matrix(enc: Encoded, pool: str) -> np.ndarray:
    """``[n_words, n_tokens]`` weights that pool token vectors into word vectors."""
    if pool not in POOLING:
        raise ProbekitError(f"unknown pooling {pool!r}", fix=f"use one of {POOLING}")
    m = np.zeros((len(enc.word_spans), enc.n_tokens), dtype=np.float32)
    for w, (a, b) in enumerate(enc.word_spans):
        if pool == "first":
            m[w, a] = 1.0
        elif pool == "last":
            m[w, b - 1] = 1.0
        else:
            m[w, a:b] = 1.0 / (b - a)
    return m


def word_attention(
    pattern: np.ndarray, enc: Encoded, renormalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Token attention -> word attention (Clark et al. 2019).

    ``pattern  # [layer, head, q_tok, k_tok]`` for one sentence (no padding).
    Returns ``word_att  # [layer, head, from_word, to_word]`` and
    ``special_mass  # [layer, head, from_word]``, the attention each word sends to special/sink tokens.
    Without renormalisation ``word_att.sum(-1) + special_mass == 1`` for every row.

    Examples
    --------
    >>> import numpy as np
    >>> import probekit as pk
    >>> enc = pk.align(pk.load_model("tiny-llama", device="cpu"), pk.load_dataset("seed:explored")[0])
    >>> n = enc.n_tokens
    >>> pattern = np.tril(np.ones((1, 1, n, n), dtype=np.float32))      # [layer, head, q_tok, k_tok]
    >>> pattern /= pattern.sum(-1, keepdims=True)                       # uniform causal attention
    >>> word_att, mass = pk.word_attention(pattern, enc)
    >>> word_att.shape, float(word_att[0, 0, 1].sum() + mass[0, 0, 1])
    ((1, 1, 8, 8), 1.0)
    """
    from_mean = pooling_matrix(enc, "mean")  # [W, T]
    to_sum = (from_mean > 0).astype(pattern.dtype)  # [W, T]
    rows = np.einsum("wq,lhqk->lhwk", from_mean, pattern)  # [L, H, W, T]
    word_att = np.einsum("lhwk,vk->lhwv", rows, to_sum)  # [L, H, W, W]
    special_mass = rows.sum(-1) - word_att.sum(-1)  # [L, H, W]
    special_mass = np.clip(special_mass, 0.0, None)
    if renormalize:
        word_att = word_att / np.clip(word_att.sum(-1, keepdims=True), 1e-12, None)
    return word_att.astype(np.float32), special_mass.astype(np.float32)
