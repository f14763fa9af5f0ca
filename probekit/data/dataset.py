"""`Dataset`: an ordered, immutable collection of `Sentence`s and/or `MinimalPair`s, plus tidy views.

Every loader in `probekit.data` returns a `Dataset`. It remembers the ``spec`` it was loaded from (for
example ``"ud:../shared/data/ud-en-ewt/en_ewt-ud-dev.conllu"``) so results can say what data they used.

Tidy views (one observation per row, Wickham 2014, "Tidy Data", J. Stat. Software 59(10)):

- `Dataset.to_frame` — one row per word (sentences) or one row per pair (minimal pairs);
- `Dataset.arcs` — one row per dependency arc (root attachments are not arcs and are left out).

Splits are deterministic and by *sentence* (never by word), so no sentence contributes words to both
sides. `holdout_mask` is the one splitting function: `Dataset.split`, `Dataset.lexical_split` and the
probes all call it. `Dataset.lexical_split` holds out word *types* (Hewitt & Liang 2019, "Designing and
Interpreting Probes with Control Tasks", EMNLP: a probe can memorise word identity, so test on types it
never trained on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from probekit.data.schema import MinimalPair, Sentence
from probekit.errors import ProbekitError

if TYPE_CHECKING:  # pandas is imported lazily: `import probekit.data` stays fast
    import pandas as pd

Item = Sentence | MinimalPair

WORD_COLUMNS = (
    "sentence_idx",
    "sentence_id",
    "word_id",
    "word",
    "head",
    "deprel",
    "deprel_full",
    "upos",
    "space_after",
)
PAIR_COLUMNS = (
    "pair_idx",
    "id",
    "paradigm",
    "good",
    "bad",
    "prefix",
    "good_word",
    "bad_word",
    "subject_index",
    "source",
)
ARC_COLUMNS = (
    "sentence_idx",
    "sentence_id",
    "dep",
    "head",
    "deprel",
    "deprel_full",
    "dep_word",
    "head_word",
    "dep_upos",
    "head_upos",
    "distance",
)


def per_word_labels(sentence: Sentence) -> dict[str, tuple]:
    """The labels of ``sentence`` that are per-word: a list/tuple with one value per word (see `schema`)."""
    n = len(sentence.words)
    return {k: tuple(v) for k, v in sentence.labels.items() if isinstance(v, list | tuple) and len(v) == n}


def _rank_key(seed: int, key: str) -> str:
    """A stable pseudo-random sort key: SHA-256 of ``"seed:key"``.

    Unlike a seeded permutation, an item's key does not depend on the other items, so adding sentences
    to a corpus does not reshuffle the existing ones; and it is identical across numpy versions.
    """
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _check_fraction(test_size: float, name: str = "test_size") -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, Real) or not 0 < test_size < 1:
        raise ProbekitError(
            f"{name} is {test_size!r}; it must be a fraction strictly between 0 and 1",
            where=name,
            fix="pass e.g. test_size=0.5",
        )


def _n_test(n: int, test_size: float) -> int:
    """How many of ``n`` items go to the test side: rounded, but at least one on each side when n >= 2."""
    return min(max(round(n * test_size), 1), n - 1)


def holdout_mask(
    units: Sequence[Any] | np.ndarray,
    test_size: float,
    seed: int = 0,
    *,
    order: Literal["hash", "permutation"] = "hash",
    size: Literal["units", "instances"] = "units",
    what: str = "unit",
    where: str = "holdout_mask",
) -> np.ndarray:
    """The train/test split every analysis uses: which instances are held out, by whole *unit*.

    Each instance belongs to one unit (a sentence id, a word type, an item key); all instances of a
    unit land on the same side, so a test unit never occurs in training. `Dataset.split`,
    `Dataset.lexical_split` and `probekit.analyses.probes.probe_layers` all split with this function.

    Parameters
    ----------
    units : one unit key per instance.
    test_size : the fraction to hold out, strictly between 0 and 1.
    seed : the same units, ``test_size`` and seed always give the same mask.
    order : how the units are ranked for a seed. ``"hash"``: by ``sha256(f"{seed}:{unit}")``, so a
        unit's rank does not depend on the other units (adding data does not reshuffle the rest) nor
        on the numpy version (`Dataset.split`, `Dataset.lexical_split`). ``"permutation"``:
        ``np.random.default_rng(seed).permutation`` of the sorted distinct units (`probe_layers`).
    size : how many ranked units go to the test side. ``"units"``: ``round(k * test_size)`` of the
        ``k`` units; ``"instances"``: the fewest first-ranked units whose instances make up at least
        ``test_size`` of all instances. Either way at least one unit stays on each side.
    what, where : name the unit and the caller in the error raised when there is a single unit.

    Returns
    -------
    np.ndarray of bool, one per instance: True for the test side.

    Examples
    --------
    >>> from probekit.data.dataset import holdout_mask
    >>> units = ["s1", "s1", "s2", "s3", "s4"]  # the sentence of each word
    >>> holdout_mask(units, test_size=0.5, seed=0).tolist()  # 2 of the 4 sentences
    [False, False, False, True, True]
    >>> holdout_mask(units, 0.5, seed=0, order="permutation", size="instances").tolist()  # >= half the words
    [True, True, False, True, False]
    """
    _check_fraction(test_size)
    if order not in ("hash", "permutation") or size not in ("units", "instances"):
        raise ProbekitError(
            f"order={order!r}, size={size!r}",
            where=where,
            fix='order is "hash" or "permutation"; size is "units" or "instances"',
        )
    units = np.asarray(units, dtype=object) if not isinstance(units, np.ndarray) else units
    unique, unit_of = np.unique(units, return_inverse=True)  # unique: sorted; unit_of: [n_instances]
    if len(unique) < 2:
        raise ProbekitError(
            f"too few examples to split: all instances come from one {what}",
            where=where,
            fix=f"use data with more {what}s",
        )
    ranked: np.ndarray  # [n_units] unit indices, first to be held out first
    if order == "hash":
        ranked = np.asarray(sorted(range(len(unique)), key=lambda i: _rank_key(seed, str(unique[i]))))
    else:
        ranked = np.random.default_rng(seed).permutation(len(unique))
    if size == "units":
        n_test_units = _n_test(len(unique), test_size)
    else:
        cumulative = np.cumsum(np.bincount(unit_of, minlength=len(unique))[ranked])  # instances so far
        n_test_units = int(np.searchsorted(cumulative, test_size * len(units))) + 1
        n_test_units = min(max(n_test_units, 1), len(unique) - 1)
    return np.isin(unit_of, ranked[:n_test_units])


@dataclass(frozen=True, eq=False)  # eq=False: numpy masks do not compare to a single bool
class LexicalSplit:
    """A train/test split of word *types*, returned by `Dataset.lexical_split`.

    The masks are boolean arrays aligned with the rows of ``dataset.to_frame()`` (one row per word, in
    dataset order). A row is a *test* row when its word type (lower-cased word) is held out; every other
    row is a *train* row, so a held-out type never appears in a training position. Typical use::

        frame = data.to_frame()
        lex = data.lexical_split(seed=0)
        train, test = frame[lex.train_mask], frame[lex.test_mask]

    ``train_types``/``test_types`` are the candidate types (``words_of_interest``) on each side; words
    outside ``words_of_interest`` are never held out, so their rows are train rows.
    """

    train_types: frozenset[str]
    test_types: frozenset[str]
    train_mask: np.ndarray
    test_mask: np.ndarray

    def is_test(self, word: str) -> bool:
        """Whether ``word`` (any case) is a held-out type."""
        return word.lower() in self.test_types

    def is_train(self, word: str) -> bool:
        """Whether ``word`` may be used for training (it is not a held-out type)."""
        return not self.is_test(word)


@dataclass(frozen=True)
class Dataset:
    """An ordered, immutable collection of `Sentence`s and `MinimalPair`s loaded from ``spec``.

    ``len(data)``, ``data[i]`` and ``for item in data`` work on ``items``; ``data[a:b]`` is a `Dataset`.

    Examples
    --------
    >>> import probekit as pk
    >>> data = pk.load_dataset("template:svo_adj?n=10")
    >>> dev, test = data.split(test_size=0.5, seed=0)
    >>> len(data), len(dev) + len(test), len(data[:3])
    (10, 10, 3)
    """

    spec: str
    items: tuple[Item, ...]

    def __post_init__(self):
        items = tuple(self.items)
        for i, item in enumerate(items):
            if not isinstance(item, Sentence | MinimalPair):
                raise ProbekitError(
                    f"item {i} is a {type(item).__name__}, not a Sentence or MinimalPair",
                    where=f"Dataset({self.spec!r})",
                    fix="build datasets from probekit.data.Sentence / MinimalPair objects",
                )
        object.__setattr__(self, "items", items)

    # --- sequence protocol ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int | slice) -> Item | Dataset:
        if isinstance(index, slice):
            return Dataset(self.spec, self.items[index])
        return self.items[index]

    def __repr__(self) -> str:
        return f"Dataset({self.spec!r}: {len(self.sentences)} sentences, {len(self.pairs)} pairs)"

    @property
    def sentences(self) -> tuple[Sentence, ...]:
        """The `Sentence` items, in order."""
        return tuple(x for x in self.items if isinstance(x, Sentence))

    @property
    def pairs(self) -> tuple[MinimalPair, ...]:
        """The `MinimalPair` items, in order."""
        return tuple(x for x in self.items if isinstance(x, MinimalPair))

    # --- subsets ----------------------------------------------------------------------------------
    def head(self, n: int) -> Dataset:
        """The first ``n`` items (all of them if there are fewer)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ProbekitError(
                f"n is {n!r}; it must be a non-negative integer", where="Dataset.head", fix="pass e.g. n=100"
            )
        return Dataset(self.spec, self.items[:n])

    def subset(self, n_or_indices: int | Iterable[int]) -> Dataset:
        """The first ``n`` items when given an int (like `head`), else the items at the given indices."""
        if isinstance(n_or_indices, int) and not isinstance(n_or_indices, bool):
            return self.head(n_or_indices)
        if isinstance(n_or_indices, bool) or not isinstance(n_or_indices, Iterable):
            raise ProbekitError(
                f"subset takes an int n or integer indices, not {n_or_indices!r}",
                where="Dataset.subset",
                fix="pass an int n for the first n items, or a list of indices",
            )
        indices = list(n_or_indices)
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -len(self) <= i < len(self):
                raise ProbekitError(
                    f"index {i!r} is not a valid item index for {len(self)} items",
                    where="Dataset.subset",
                    fix="pass integer indices in range, or an int n for the first n items",
                )
        return Dataset(self.spec, tuple(self.items[int(i)] for i in indices))

    def split(self, test_size: float = 0.5, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Split into ``(dev, test)`` by item (sentence or pair), deterministically for a ``seed``.

        Each item is a unit of `holdout_mask` (``order="hash"``, ``size="units"``) keyed ``f"{id}:{k}"``,
        where k counts earlier items with the same id (so duplicate ids still split): items are ranked by
        ``sha256(f"{seed}:{id}:{k}")`` and the first ``round(len * test_size)`` form the test side (at
        least one item on each side). Both sides keep the dataset's order.

        Examples
        --------
        >>> from probekit.data import load_dataset
        >>> dev, test = load_dataset("template:svo_adj?n=20").split(test_size=0.25, seed=0)
        >>> len(dev), len(test)
        (15, 5)
        """
        _check_fraction(test_size)
        if len(self) < 2:
            kind = "minimal pair" if self.items and isinstance(self.items[0], MinimalPair) else "sentence"
            raise ProbekitError(
                f"the data has only {len(self)} {kind}{'' if len(self) == 1 else 's'}: a dev/test split "
                f"needs at least 2",
                where=f"Dataset({self.spec!r})",
                fix=f"give a file with 2 or more {kind}s (more for stable numbers), or a larger "
                "--max-sentences",
            )
        seen: dict[str, int] = {}
        keys = []
        for item in self.items:
            k = seen.get(item.id, 0)
            seen[item.id] = k + 1
            keys.append(f"{item.id}:{k}")
        is_test = holdout_mask(
            keys, test_size, seed, order="hash", size="units", what="item", where="Dataset.split"
        )
        dev = tuple(x for x, t in zip(self.items, is_test, strict=True) if not t)
        test = tuple(x for x, t in zip(self.items, is_test, strict=True) if t)
        return (
            Dataset(f"{self.spec} [dev, test_size={test_size}, seed={seed}]", dev),
            Dataset(f"{self.spec} [test, test_size={test_size}, seed={seed}]", test),
        )

    def lexical_split(
        self, words_of_interest: Iterable[str] | None = None, test_size: float = 0.5, seed: int = 0
    ) -> LexicalSplit:
        """Hold out word *types*: returns a `LexicalSplit` with row masks over ``to_frame()``.

        Types are lower-cased words. ``words_of_interest`` (default: every type in the data) are the units
        of `holdout_mask` (``order="hash"``, ``size="units"``): ranked by ``sha256(f"{seed}:{type}")``,
        the first ``round(k * test_size)`` are held out (test types). Test rows
        are the words of a held-out type; all other rows are train rows, so held-out types never appear
        in training positions.
        """
        _check_fraction(test_size)
        sentences = self.sentences
        if not sentences:
            raise ProbekitError(
                "lexical_split needs sentences, and this dataset has only minimal pairs",
                where=f"Dataset({self.spec!r})",
                fix="use a sentence dataset (ud:, template:svo_adj, text:, seed:)",
            )
        row_types = [w.lower() for s in sentences for w in s.words]
        if words_of_interest is None:
            candidates = sorted(set(row_types))
        else:
            if isinstance(words_of_interest, str):
                raise ProbekitError(
                    "words_of_interest is a single string; it must be a collection of words",
                    where="Dataset.lexical_split",
                    fix='pass a list, e.g. words_of_interest=["cat", "dog"]',
                )
            candidates = sorted({w.lower() for w in words_of_interest})
        if len(candidates) < 2:
            raise ProbekitError(
                f"lexical_split needs at least 2 word types, got {len(candidates)}",
                where="Dataset.lexical_split",
                fix="pass more words_of_interest (or None for every word type in the data)",
            )
        held_out = holdout_mask(
            candidates,
            test_size,
            seed,
            order="hash",
            size="units",
            what="word type",
            where="Dataset.lexical_split",
        )  # [n_candidates]
        test_types = frozenset(t for t, h in zip(candidates, held_out, strict=True) if h)
        test_mask = np.fromiter((t in test_types for t in row_types), dtype=bool, count=len(row_types))
        return LexicalSplit(
            train_types=frozenset(t for t, h in zip(candidates, held_out, strict=True) if not h),
            test_types=test_types,
            train_mask=~test_mask,
            test_mask=test_mask,
        )

    # --- tidy views -------------------------------------------------------------------------------
    def to_frame(self, kind: str | None = None) -> pd.DataFrame:
        """A tidy DataFrame: ``kind="words"`` (one row per word) or ``kind="pairs"`` (one row per pair).

        With ``kind=None`` the kind follows the data: words for sentence datasets, pairs for pair
        datasets (a dataset holding both must say which).

        Word rows: ``sentence_idx`` (position in `sentences`), ``sentence_id``, ``word_id`` (0-based),
        ``word``, ``head`` (-1 root; None without a tree), ``deprel``, ``deprel_full``, ``upos``,
        ``space_after``, then one column per per-word label (None where a sentence lacks it).
        Pair rows: ``pair_idx``, the `MinimalPair` fields, then one column per label.
        """
        import pandas as pd

        kind = self._frame_kind(kind)
        if kind == "pairs":
            rows = []
            label_names = _ordered_keys(p.labels for p in self.pairs)
            for k, p in enumerate(self.pairs):
                row = {"pair_idx": k, **{c: getattr(p, c) for c in PAIR_COLUMNS[1:]}}
                row.update({name: p.labels.get(name) for name in label_names})
                rows.append(row)
            return pd.DataFrame(rows, columns=[*PAIR_COLUMNS, *label_names])

        label_names = _ordered_keys(per_word_labels(s) for s in self.sentences)
        columns: dict[str, list[Any]] = {c: [] for c in (*WORD_COLUMNS, *label_names)}
        for k, s in enumerate(self.sentences):
            n = len(s.words)
            labels = per_word_labels(s)
            spaces = s.space_after or tuple(i < n - 1 for i in range(n))
            columns["sentence_idx"] += [k] * n
            columns["sentence_id"] += [s.id] * n
            columns["word_id"] += list(range(n))
            columns["word"] += list(s.words)
            columns["head"] += list(s.heads) if s.heads is not None else [None] * n
            columns["deprel"] += list(s.deprels) if s.deprels is not None else [None] * n
            columns["deprel_full"] += list(s.deprels_full or s.deprels or [None] * n)
            columns["upos"] += list(s.upos) if s.upos is not None else [None] * n
            columns["space_after"] += [bool(x) for x in spaces]
            for name in label_names:
                columns[name] += list(labels.get(name, [None] * n))
        return pd.DataFrame(columns)

    def arcs(self) -> pd.DataFrame:
        """One row per dependency arc (dependent -> head), root attachments left out.

        Columns: ``sentence_idx``, ``sentence_id``, ``dep``, ``head`` (0-based word indices), ``deprel``
        (base), ``deprel_full``, ``dep_word``, ``head_word``, ``dep_upos``, ``head_upos``, ``distance``
        (``head - dep``). Sentences without a tree contribute no rows.
        """
        import pandas as pd

        rows = []
        for k, s in enumerate(self.sentences):
            if s.heads is None:
                continue
            full = s.deprels_full or s.deprels
            for dep, head in enumerate(s.heads):
                if head < 0:
                    continue
                rows.append(
                    (
                        k,
                        s.id,
                        dep,
                        head,
                        s.deprels[dep] if s.deprels else None,
                        full[dep] if full else None,
                        s.words[dep],
                        s.words[head],
                        s.upos[dep] if s.upos else None,
                        s.upos[head] if s.upos else None,
                        head - dep,
                    )
                )
        return pd.DataFrame(rows, columns=list(ARC_COLUMNS))

    def _frame_kind(self, kind: str | None) -> str:
        if kind not in (None, "words", "pairs"):
            raise ProbekitError(
                f"kind is {kind!r}", where="Dataset.to_frame", fix='use kind="words" or kind="pairs"'
            )
        if kind is not None:
            return kind
        n_sent, n_pairs = len(self.sentences), len(self.pairs)
        if n_sent and n_pairs:
            raise ProbekitError(
                f"this dataset holds {n_sent} sentences and {n_pairs} pairs; to_frame() cannot guess which",
                where=f"Dataset({self.spec!r})",
                fix='pass kind="words" or kind="pairs"',
            )
        return "pairs" if n_pairs else "words"


def _ordered_keys(dicts: Iterable[dict]) -> list[str]:
    """The union of the dicts' keys, in first-seen order (so columns are stable)."""
    seen: dict[str, None] = {}
    for d in dicts:
        for key in d:
            seen.setdefault(key, None)
    return list(seen)
