"""Probing tasks: from sentences to (instance, label) pairs, and the control task.

Token tasks (``upos``, ``role``, ``number``, ``sense``, any per-word label) give one instance per
labelled word; ``relation:R`` gives ordered word pairs whose arcs come from
`probekit.data.relations.relation_instances`, the reader head scoring uses too. `control_labels` is the
Hewitt & Liang (2019) control task. Definitions: ``docs/methods/probes.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probekit.data.dataset import Dataset
from probekit.data.relations import POSITIONAL_RELATIONS, relation_instances
from probekit.errors import ProbekitError

__all__ = ["BUILTIN_TASKS", "TaskInstances", "control_labels", "task_instances"]

ROLES = {
    "nsubj": "subj",
    "obj": "obj",
}  # base deprel -> role label (the values of labels["role"] in templates)
BUILTIN_TASKS = ("upos", "role", "relation:<deprel>")


@dataclass(frozen=True)
class TaskInstances:
    """The probing instances of one task: a word (or an ordered word pair) with a label."""

    sentence_ids: np.ndarray  # [n] sentence id of each instance
    word_ids: np.ndarray  # [n, 1] word index, or [n, 2] (head, dependent) for pair tasks
    words: np.ndarray  # [n, 1|2] the word strings, to check the capture lines up with the data
    labels: np.ndarray  # [n]
    types: np.ndarray  # [n] lowercased word type, or "head|dependent" type pair

    def subset(self, keep: np.ndarray) -> TaskInstances:
        """The instances where ``keep`` (a bool mask or indices) selects."""
        return TaskInstances(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def task_instances(sentences: Sequence, task: str, data_name: str) -> TaskInstances:
    """The instances of one probing task.

    Parameters
    ----------
    sentences : the `Sentence` objects to read.
    task : ``"upos"`` (Sentence.upos), ``"role"`` (words whose base deprel is nsubj → "subj" or obj →
        "obj"), any per-word label ``labels[task]`` (``"number"``, ``"sense"``; words whose label is None
        are skipped), or ``"relation:R"`` (word pairs; R as in `probekit.data.relations.relation_instances`,
        so ``relation:dobj`` is ``relation:obj`` and ``relation:nsubj:pass`` matches the full label).
        Sentences lacking the annotation are skipped; if none has it, that is an error.
    data_name : names the data in error messages.

    Returns
    -------
    TaskInstances

    Examples
    --------
    >>> from probekit.data import load_dataset
    >>> from probekit.analyses.probes.tasks import task_instances
    >>> data = load_dataset("template:svo_adj?n=10")
    >>> inst = task_instances(data.sentences, "relation:dobj", "svo")
    >>> inst.word_ids.shape, int(inst.labels.sum())
    ((20, 2), 10)
    """
    where = f"task {task!r} on {data_name}"
    if not isinstance(task, str) or not task:
        raise ProbekitError(f"a task must be a non-empty string, got {task!r}", where="probe_layers")
    if task.startswith("relation:"):
        return _relation_task(sentences, task, data_name, where)
    if task == "upos":
        need, fix = "Sentence.upos", "load a treebank with UPOS tags (e.g. CoNLL-U) or tag the data first"

        def get(s):
            return s.upos
    elif task == "role":
        need, fix = "Sentence.deprels", "load data with dependency relations (CoNLL-U, or parse the text)"

        def get(s):
            return None if s.deprels is None else [ROLES.get(r.split(":")[0]) for r in s.deprels]
    else:
        need = f"a per-word label labels[{task!r}] (a list with one entry per word)"
        per_word = sorted({k for s in sentences for k, v in s.labels.items() if _is_per_word(v, s)})
        fix = (
            f"use a built-in task {BUILTIN_TASKS} or one of this data's per-word labels {per_word}; "
            f"a sentence-level label cannot be probed per word"
        )

        def get(s):
            v = s.labels.get(task)
            return v if _is_per_word(v, s) else None

    sids, wids, words, labels = [], [], [], []
    has_annotation = False
    for s in sentences:
        values = get(s)
        if values is None:
            continue
        has_annotation = True
        for i, lab in enumerate(values):
            if lab is not None:
                sids.append(str(s.id))
                wids.append(i)
                words.append(s.words[i])
                labels.append(lab)
    if not has_annotation:
        raise ProbekitError(
            f"task {task!r} needs {need}, but no sentence in {data_name} has it", where=where, fix=fix
        )
    if not labels:
        raise ProbekitError(
            f"task {task!r}: the data has {need} but no word carries a label", where=where, fix=fix
        )
    words_arr = np.asarray(words, dtype=object)
    return TaskInstances(
        sentence_ids=np.asarray(sids, dtype=object),
        word_ids=np.asarray(wids, dtype=int)[:, None],
        words=words_arr[:, None],
        labels=_label_array(labels),
        types=np.asarray([w.lower() for w in words], dtype=object),
    )


def _relation_task(sentences: Sequence, task: str, data_name: str, where: str) -> TaskInstances:
    """Pair task ``relation:R``: is word a the head of word b with relation R?

    Positives: the R arcs ``(head, dependent)`` that `relation_instances` finds. Negatives: for each
    sentence with an R arc, as many ordered pairs ``(a, b)``, ``a != b``, drawn uniformly without
    replacement (seed 0, the same for every run seed) from that sentence's pairs that are not R arcs.
    The type of a pair is ``"a|b"`` (lowercased).
    """
    relation = task.split(":", 1)[1]
    if not relation:
        raise ProbekitError(
            "relation task without a relation name", where=where, fix="e.g. task='relation:nsubj'"
        )
    if relation in POSITIONAL_RELATIONS:
        raise ProbekitError(
            f"task {task!r}: {relation!r} is a positional relation, not a dependency arc",
            where=where,
            fix="use a dependency relation, e.g. 'relation:nsubj'",
        )
    if not any(s.heads is not None and s.deprels is not None for s in sentences):
        raise ProbekitError(
            f"task {task!r} needs Sentence.heads and Sentence.deprels, but no sentence has them",
            where=where,
            fix="load data with dependency trees (CoNLL-U, or parse the text)",
        )
    try:
        arcs = relation_instances(
            Dataset(data_name, tuple(sentences)), [relation], directions=("dep_to_head",)
        )
    except ProbekitError as err:  # the relation does not occur: say so for this task
        raise ProbekitError(f"task {task!r}: {err.what}", where=where, fix=err.fix) from None
    positives: dict[int, set[tuple[int, int]]] = {}  # sentence index -> {(head, dependent)}
    for k, dep, head in zip(arcs.sentence_idx, arcs.src, arcs.tgt, strict=True):
        positives.setdefault(int(k), set()).add((int(head), int(dep)))
    rng = np.random.default_rng(0)
    sids, pairs, words, labels = [], [], [], []
    for k, s in enumerate(sentences):
        pos = positives.get(k)
        if not pos:
            continue
        n = len(s.words)
        candidates = [(a, b) for a in range(n) for b in range(n) if a != b and (a, b) not in pos]
        take = rng.choice(len(candidates), size=min(len(pos), len(candidates)), replace=False)
        for pair, lab in [(p, True) for p in sorted(pos)] + [(candidates[i], False) for i in sorted(take)]:
            sids.append(str(s.id))
            pairs.append(pair)
            words.append((s.words[pair[0]], s.words[pair[1]]))
            labels.append(lab)
    if not labels:
        raise ProbekitError(
            f"task {task!r}: no arc in the data has relation {relation!r}",
            where=where,
            fix="check the relation name (e.g. 'nsubj', 'obj', 'amod', 'nsubj:pass')",
        )
    words_arr = np.asarray(words, dtype=object).reshape(-1, 2)
    return TaskInstances(
        sentence_ids=np.asarray(sids, dtype=object),
        word_ids=np.asarray(pairs, dtype=int).reshape(-1, 2),
        words=words_arr,
        labels=np.asarray(labels, dtype=bool),
        types=np.asarray([f"{a.lower()}|{b.lower()}" for a, b in words_arr], dtype=object),
    )


def _is_per_word(value, sentence) -> bool:
    return isinstance(value, list | tuple) and len(value) == len(sentence.words)


def _label_array(labels: list) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuUS":  # mixed or unusual label types: compare them as strings
        arr = np.asarray([str(v) for v in labels])
    return arr


def control_labels(
    word_types: Sequence[str] | np.ndarray, labels: Sequence | np.ndarray, seed: int = 0
) -> np.ndarray:
    """Type-level control labels (Hewitt & Liang 2019, §2): one random label per word type.

    Every word *type* — the lowercased word string, ``str(w).lower()`` — draws one label at random from
    the empirical (token-level) label distribution of the task, and all tokens of that type get that
    label. The control task is thus learnable only by memorising word identity; it is not a per-token
    shuffle, which no probe could learn at all.

    Parameters
    ----------
    word_types : one word (or type key) per instance; lowercased to form types.
    labels : the task label of each instance, same length.
    seed : seed of the draw (same seed and data → same control labels).

    Returns
    -------
    np.ndarray of control labels, one per instance, drawn from the set of task labels.

    Examples
    --------
    >>> from probekit.analyses.probes import control_labels
    >>> c = control_labels(["The", "cat", "the", "dog"], ["DET", "NOUN", "DET", "NOUN"], seed=0)
    >>> bool(c[0] == c[2]), set(c) <= {"DET", "NOUN"}
    (True, True)
    """
    types = np.asarray([str(w).lower() for w in word_types], dtype=object)
    label_arr = np.asarray(labels)
    if types.shape != label_arr.shape or label_arr.ndim != 1:
        raise ProbekitError(
            f"word_types has {types.size} items but labels has shape {label_arr.shape}",
            where="control_labels",
            fix="give one word type and one label per instance",
        )
    if label_arr.size == 0:
        raise ProbekitError("no instances to build a control task from", where="control_labels")
    if any(lab is None for lab in label_arr.tolist()):
        raise ProbekitError(
            "labels contain None", where="control_labels", fix="drop unlabelled instances first"
        )
    classes, counts = np.unique(label_arr, return_counts=True)
    unique_types, type_of = np.unique(types, return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(classes), size=len(unique_types), p=counts / counts.sum())
    return classes[drawn][type_of]
