"""Datasets for probekit: sentences with gold dependency arcs, and minimal pairs.

Everything is loaded through one function and a *spec* string ``SCHEME:ARGUMENT``::

    load_dataset("ud:data/ud-en-ewt/en_ewt-ud-dev.conllu")   # CoNLL-U treebank (bundled: UD EWT dev)
    load_dataset("blimp:data/blimp")                         # BLiMP .jsonl file or directory (bundled)
    load_dataset("template:svo_adj?n=500", seed=1)                     # generated, gold arcs
    load_dataset("text:notes.txt")                                     # raw text parsed with spaCy
    load_dataset("seed:bank")                                          # the source document's examples

Schemes (`SCHEMES`):

- ``ud:PATH`` — a CoNLL-U file (`probekit.data.ud`).
- ``blimp:PATH`` — a BLiMP ``.jsonl`` file, or a directory whose ``*.jsonl`` files are read in name
  order (`probekit.data.blimp`).
- ``template:NAME[?key=value&key=value]`` — a generated dataset (`probekit.data.templates`): ``svo_adj``,
  ``agreement``, ``agreement_sentences``, ``bank_sense``. Parameters: ``n`` (how many items, default
  200), e.g. ``template:agreement?n=600``, and ``seed``, which overrides `load_dataset`'s ``seed`` for
  this spec (``template:agreement_sentences?n=200&seed=1``: other sentences than seed 0's).
- ``text:PATH`` — a UTF-8 English text file, sentence-split and parsed by spaCy with labels mapped to
  UD (`probekit.data.parse`; needs ``pip install 'probekit-mi[parse]'``). For text in memory use
  `parse_text`.
- ``seed:NAME`` — ``bank``, ``explored`` or ``all`` (`probekit.data.seeds`).

The repository ships UD English EWT dev and six BLiMP agreement paradigms in ``data/``
(`probekit.data.bundled`: ``EWT_DEV``, ``BLIMP_DIR``); any spec can point at a user's own files.

``max_sentences`` keeps the first N items (sentences or pairs), deterministically. A problem with the
input raises one `probekit.errors.ProbekitError` saying what, where and what to do; nothing partial is
returned.
"""

from __future__ import annotations

from probekit.data.blimp import load_blimp
from probekit.data.dataset import Dataset, LexicalSplit
from probekit.data.parse import CLEARNLP_TO_UD, load_text, parse_text
from probekit.data.relations import (
    POSITIONAL_RELATIONS,
    RELATION_ALIASES,
    present_relations,
    relation_instances,
)
from probekit.data.schema import MinimalPair, Sentence
from probekit.data.seeds import load_seed
from probekit.data.templates import DEFAULT_N, TEMPLATES, agreement_sentences
from probekit.data.templates import generate as generate_template
from probekit.data.ud import load_conllu
from probekit.errors import ProbekitError

__all__ = [
    "CLEARNLP_TO_UD",
    "POSITIONAL_RELATIONS",
    "RELATION_ALIASES",
    "SCHEMES",
    "TEMPLATES",
    "Dataset",
    "LexicalSplit",
    "MinimalPair",
    "Sentence",
    "agreement_sentences",
    "generate_template",
    "load_blimp",
    "load_conllu",
    "load_dataset",
    "load_seed",
    "load_text",
    "parse_spec",
    "parse_text",
    "present_relations",
    "relation_instances",
]

#: scheme -> what its argument is
SCHEMES: dict[str, str] = {
    "ud": "path to a CoNLL-U file",
    "blimp": "path to a BLiMP .jsonl file or a directory of them",
    "template": f"template name ({', '.join(TEMPLATES)}), optionally ?n=N&seed=S",
    "text": "path to an English text file (parsed with spaCy)",
    "seed": "bank, explored or all",
}

_TEMPLATE_PARAMS = ("n", "seed")


def parse_spec(spec: str) -> tuple[str, str, dict[str, int]]:
    """Split ``"scheme:argument?key=value&..."`` into ``(scheme, argument, params)``.

    Only ``template:`` takes ``?key=value`` parameters (``n``, a positive integer); for the other
    schemes everything after the colon is the argument, so paths may contain ``?``.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ProbekitError(
            f"dataset spec {spec!r} has no scheme",
            where="load_dataset(spec)",
            fix=f"write SCHEME:ARGUMENT with a scheme from {list(SCHEMES)}, e.g. 'template:svo_adj'",
        )
    scheme, argument = spec.split(":", 1)
    if scheme not in SCHEMES:
        raise ProbekitError(
            f"unknown dataset scheme {scheme!r}",
            where=f"spec {spec!r}",
            fix="use one of: " + "; ".join(f"{k}: ({v})" for k, v in SCHEMES.items()),
        )
    params: dict[str, int] = {}
    if scheme == "template" and "?" in argument:
        argument, query = argument.split("?", 1)
        for part in query.split("&"):
            key, sep, value = part.partition("=")
            if not sep or key not in _TEMPLATE_PARAMS:
                raise ProbekitError(
                    f"template parameter {part!r} is not key=value with a known key",
                    where=f"spec {spec!r}",
                    fix=f"known keys: {list(_TEMPLATE_PARAMS)}, e.g. template:{argument}?n=500",
                )
            if not value.isdigit() or (key == "n" and int(value) < 1):
                raise ProbekitError(
                    f"{key}={value!r} is not a {'positive' if key == 'n' else 'non-negative'} integer",
                    where=f"spec {spec!r}",
                    fix=f"e.g. template:{argument}?{key}=500",
                )
            params[key] = int(value)
    if not argument:
        raise ProbekitError(
            f"dataset spec {spec!r} has nothing after {scheme + ':'!r}",
            where=f"spec {spec!r}",
            fix=f"give the {SCHEMES[scheme]}",
        )
    return scheme, argument, params


def load_dataset(spec: str, *, max_sentences: int | None = None, seed: int = 0) -> Dataset:
    """Load the dataset that ``spec`` names (see the module docstring for the schemes).

    Parameters
    ----------
    spec : str
        ``SCHEME:ARGUMENT``: ``ud:PATH``, ``blimp:PATH``, ``template:NAME[?n=N]``, ``text:PATH``,
        ``seed:NAME``.
    max_sentences : int, optional
        Keep the first N items (sentences or pairs).
    seed : int
        Seeds generated (``template:``) data.

    Returns
    -------
    Dataset
        Sentences (with gold arcs where the source has them) or minimal pairs.

    Examples
    --------
    >>> import probekit as pk
    >>> data = pk.load_dataset("template:svo_adj?n=3", seed=0)
    >>> len(data), data[0].words[:2]
    (3, ('The', ...))
    >>> pk.load_dataset("seed:explored")[0].text
    'The curious cat explored the mysterious room.'
    """
    if max_sentences is not None and (
        isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1
    ):
        raise ProbekitError(
            f"max_sentences is {max_sentences!r}",
            where="load_dataset",
            fix="pass a positive integer, or None for all",
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ProbekitError(
            f"seed is {seed!r}, not an integer", where="load_dataset", fix="pass an integer seed, e.g. seed=0"
        )
    scheme, argument, params = parse_spec(spec)
    if scheme == "ud":
        items = load_conllu(argument, max_sentences=max_sentences)  # type: list[Sentence] | list[MinimalPair]
    elif scheme == "blimp":
        items = load_blimp(argument, max_pairs=max_sentences)
    elif scheme == "template":
        items = generate_template(argument, n=params.get("n", DEFAULT_N), seed=params.get("seed", seed))
    elif scheme == "text":
        items = load_text(argument)
    else:
        items = load_seed(argument)
    if max_sentences is not None:
        items = items[:max_sentences]
    return Dataset(spec, tuple(items))
