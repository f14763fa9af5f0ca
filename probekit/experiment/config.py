"""Experiment configs: a YAML file -> a validated `ExperimentConfig`.

A config names the models, the data (named spec strings), the analyses with their options, the seed and
the output folder. Unknown keys are rejected with the nearest valid key suggested, types are checked,
relative paths (``out`` and the paths inside ``ud:``/``blimp:``/``text:`` specs) resolve against the
config file's folder, and the seed is explicit. How a config is run (stages, resume, manifest) is in
``docs/methods/experiments.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from probekit.errors import ProbekitError

#: spec schemes whose argument is a file or folder path (resolved against the config file's folder)
PATH_SCHEMES = ("ud", "blimp", "text")
#: values that YAML aliases (``*name``) may add to one file, in all: a bound against alias bombs
MAX_ALIAS_VALUES = 1000
#: characters of a rejected value quoted in an error message
EXCERPT_CHARS = 80


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckAttentionOptions(_Strict):
    """Claim C1: recompute softmax(q·k/√d) from hook_rot_q/k and compare with hook_pattern."""

    sentence: str = Field("The curious cat explored the mysterious room.", description="sentence to run")


class ClaimsOptions(_Strict):
    """Claims C2/C3: the "bank" and "explored" examples, head by head."""

    bank: str = Field("seed:bank", description="data with the two-sense 'bank' sentence")
    bank_template: str = Field("template:bank_sense", description="data for the scaled-up cue-attention test")
    explored: str = Field(
        "seed:explored", description="data with 'The curious cat explored the mysterious room.'"
    )
    n_perm: int = Field(200, ge=10, description="permutations for the best-head null")


class HeadsOptions(_Strict):
    """Claim C4: score every head on every relation, with offset/random-init/permutation baselines."""

    data: list[str] = Field(..., description="data names or specs to score on")
    relations: list[str] | None = Field(
        None, description="relations (None = nsubj, amod, det, obj + positional)"
    )
    max_sentences: int | None = Field(None, ge=1, description="first N sentences of each dataset")
    random_baseline: bool = Field(True, description="also score random:<model>")
    n_boot: int = Field(1000, ge=100, description="bootstrap resamples over sentences")
    n_perm: int = Field(200, ge=10, description="permutations for the best-of-all-heads null")
    weighting: Literal["raw", "norm", "rollout"] = Field(
        "raw",
        description="attention the heads are scored on: raw pattern, norm-weighted (Kobayashi et al. 2020) "
        "or rollout (Abnar & Zuidema 2020)",
    )


class WeightingOptions(_Strict):
    """C4 on norm-weighted and rollout attention vs raw, and the sink mass the norm weighting removes.

    Runs `probekit.analyses.heads.compare_weightings`; see ``docs/methods/weighting.md``."""

    data: list[str] = Field(..., description="data names or specs to score on")
    relations: list[str] | None = Field(
        None, description="relations (None = nsubj, amod, det, obj + positional)"
    )
    weightings: list[Literal["raw", "norm", "rollout"]] = Field(
        ["raw", "norm", "rollout"], description="weightings to compare (raw is always scored)"
    )
    max_sentences: int | None = Field(None, ge=1, description="first N sentences of each dataset")
    random_baseline: bool = Field(False, description="also score random:<model> under each weighting")
    n_boot: int = Field(1000, ge=100, description="bootstrap resamples over sentences")
    n_perm: int = Field(200, ge=10, description="permutations for the best-of-all-heads null")


class ProbesOptions(_Strict):
    """Per-layer linear probes with control task, layer-0, majority and random-init baselines."""

    data: str = Field(..., description="data name or spec")
    tasks: list[str] = Field(..., description="tasks: upos, number, role, sense, relation:R")
    layers: Literal["all"] | list[int] = Field("all", description="residual-stream layers (0 = embeddings)")
    probe: Literal["ridge", "logistic"] = Field("ridge", description="probe family")
    seeds: list[int] = Field([0, 1, 2], description="split/probe seeds")
    split: Literal["random", "lexical"] | list[Literal["random", "lexical"]] = Field(
        "random", description="train/test split: held-out sentences, held-out word types, or both as a list"
    )
    max_sentences: int | None = Field(None, ge=1, description="first N sentences")
    random_baseline: bool = Field(True, description="also probe random:<model>")


class ScoreOptions(_Strict):
    """Claim C5: minimal-pair accuracy (sum of token log-probs), per paradigm. Causal LMs only."""

    data: list[str] = Field(..., description="data names or specs holding minimal pairs")
    max_pairs: int | None = Field(None, ge=1, description="first N pairs of each paradigm")


class AblateOptions(_Strict):
    """Causal test of C4: ablate the top-k heads for a relation vs layer-matched random heads."""

    data: str = Field(..., description="minimal-pair data to measure the effect on")
    heads_data: str = Field(
        ..., description="sentence data to pick the top-k heads on (must not share a sentence with data)"
    )
    relation: str = Field("nsubj", description="relation whose heads are ablated")
    direction: Literal["dep_to_head", "head_to_dep"] = Field(
        "head_to_dep", description="direction to rank heads by"
    )
    select: list[Literal["attention", "heads_score"]] = Field(
        ["heads_score"],
        min_length=1,
        description="selection criteria, each tested against the same random draws and pairs: "
        "attention (raw attention along the arcs), heads_score (the head-scoring test-half ranking)",
    )
    top_k: int = Field(3, ge=1, description="number of heads")
    n_draws: int = Field(20, ge=2, description="random layer-matched head sets")
    method: Literal["zero", "mean", "resample"] = Field("mean", description="ablation method")
    max_pairs: int | None = Field(200, ge=1, description="first N pairs")
    metric: list[Literal["accuracy", "margin", "logprob_diff"]] | None = Field(
        None, description="pair metrics (None = all three; margin alone runs several times faster)"
    )
    n_boot: int = Field(1000, ge=100, description="bootstrap replicates of the difference CI")
    commentary: str | None = Field(
        None, description="hand-written note for the stage's summary.md (no digits: numbers come from tables)"
    )

    @field_validator("select", mode="before")
    @classmethod
    def _one_or_more_criteria(cls, value):
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and len(set(value)) != len(value):
            raise ValueError(f"a selection criterion is repeated in {value}")
        return value

    @field_validator("commentary")
    @classmethod
    def _no_numbers_in_commentary(cls, value):
        if value is not None and any(ch.isdigit() for ch in value):
            raise ValueError("the commentary must not contain digits: numbers are quoted from the tables")
        return value


class MediateOptions(_Strict):
    """Causal mediation of head roles (C4): per-head indirect and path-specific effects of counterfactual
    inputs, heads selected on one half of the pairs and reported on the other."""

    relations: list[Literal["agreement", "binding", "det_noun"]] = Field(
        ["agreement", "binding", "det_noun"],
        min_length=1,
        description="relations: agreement (subject-verb), binding (adjective-noun), det_noun (BLiMP); "
        "encoders run agreement only (probe read-out)",
    )
    agreement: str = Field("agreement", description="template:agreement pairs (data name or spec)")
    blimp: str | None = Field(
        "blimp", description="BLiMP folder (data name or blimp: spec) for subject-verb and det-noun pairs"
    )
    heads_data: str = Field(
        "ewt",
        description="the heads stage's data whose heads.csv gives the attention scores (else scored here)",
    )
    n_pairs: int = Field(60, ge=4, description="pairs per relation (half select heads, half report)")
    top_k: int = Field(5, ge=1, description="heads per set (attention, causal, positional)")
    n_random: int = Field(10, ge=0, description="layer-matched random head sets")
    probe_layer: int | None = Field(
        None, ge=1, description="encoders: residual layer the number probe reads (None = last block's output)"
    )
    n_boot: int = Field(1000, ge=100, description="bootstrap replicates over items")
    n_perm: int = Field(1000, ge=100, description="sign-flip and Spearman permutations")


class ExploreOptions(_Strict):
    """The HTML report's attention explorer: word-level attention of every head on a few sentences."""

    data: list[str] = Field(..., description="data names or specs whose first sentences the explorer shows")
    n_sentences: int = Field(4, ge=1, le=50, description="sentences per dataset and model")
    max_words: int = Field(20, ge=2, le=60, description="skip sentences longer than this many words")


class TreesOptions(_Strict):
    """Whole trees from attention: per-head MSTs, Clark et al.'s attention probe, chain/offset baselines."""

    data: str = Field(..., description="data name or spec with gold trees (ud:)")
    max_sentences: int | None = Field(
        None, ge=3, description="first N usable sentences (the whole data is captured, reusing the cache)"
    )
    max_words: int = Field(40, ge=2, description="skip sentences longer than this many words")
    split: list[float] = Field(
        [0.5, 0.2, 0.3],
        min_length=3,
        max_length=3,
        description="train, dev, test fractions (probe and offset fit on train, heads chosen on dev)",
    )
    probe_sentences: int = Field(300, ge=1, description="at most N train sentences fit the attention probe")
    random_baseline: bool = Field(True, description="also run random:<model>")
    n_boot: int = Field(1000, ge=100, description="bootstrap resamples over test sentences")
    structural: bool = Field(
        False,
        description="also fit Hewitt & Manning structural probes (probekit.analyses.trees.structural), "
        "written as structural_probes.csv next to the trees tables",
    )


class Analyses(_Strict):
    """The analyses to run: one optional section per stage of `probekit.experiment.stages.STAGES`."""

    check_attention: CheckAttentionOptions | None = None
    claims: ClaimsOptions | None = None
    heads: HeadsOptions | None = None
    weighting: WeightingOptions | None = None
    probes: list[ProbesOptions] | None = None
    score: ScoreOptions | None = None
    ablate: AblateOptions | None = None
    mediate: MediateOptions | None = None
    explore: ExploreOptions | None = None
    trees: TreesOptions | None = None

    @field_validator("probes")
    @classmethod
    def _one_probes_entry_per_data(cls, entries):
        # each (model, data) pair is one stage folder, probes/<model>__<data>: two entries would overwrite it
        seen = [e.data for e in entries or ()]
        repeated = sorted({d for d in seen if seen.count(d) > 1})
        if repeated:
            raise ValueError(f"several probes entries use data {repeated}; put their tasks in one entry")
        return entries


class ExperimentConfig(_Strict):
    """One experiment: models × data × analyses, with an explicit seed.

    Examples
    --------
    >>> from probekit.experiment import validate_config
    >>> cfg = validate_config({"name": "x", "seed": 0, "out": "runs/x", "models": ["tiny-llama"],
    ...                        "analyses": {"check_attention": {}}})
    >>> cfg.models, cfg.analyses.heads is None
    (['tiny-llama'], True)
    """

    name: str = Field(..., description="experiment name (used in titles)")
    seed: int = Field(
        ..., description="seed for every random choice (splits, bootstraps, permutations, random-init)"
    )
    out: str = Field(..., description="output folder, relative to the config file")
    models: list[str] = Field(..., min_length=1, description="model names (see `probekit models`)")
    data: dict[str, str] = Field(
        default_factory=dict, description="named data specs, e.g. svo: template:svo_adj"
    )
    optional_data: dict[str, str] = Field(
        default_factory=dict, description="named specs used only if their path exists"
    )
    batch_size: int = Field(16, ge=1, description="sentences per forward pass")
    analyses: Analyses = Field(default_factory=Analyses, description="what to run")

    def config_hash(self) -> str:
        """The first 16 hex digits of the SHA-256 of the config's JSON (recorded in ``manifest.json``).

        Paths inside the repository (``out`` and the paths of ``ud:``/``blimp:``/``text:`` specs) are
        hashed relative to it, so the same config gives the same hash in every clone.

        Examples
        --------
        >>> a = validate_config({"name": "x", "seed": 0, "out": str(REPO / "o"), "models": ["tiny-bert"],
        ...                      "data": {"u": f"ud:{REPO / 'data' / 'x.conllu'}"}})
        >>> b = a.model_copy(update={"out": "o", "data": {"u": "ud:data/x.conllu"}})
        >>> a.config_hash() == b.config_hash()
        True
        """
        cfg = self.model_copy(
            update={
                "out": _repo_relative(self.out),
                "data": {k: _repo_relative_spec(v) for k, v in self.data.items()},
                "optional_data": {k: _repo_relative_spec(v) for k, v in self.optional_data.items()},
            }
        )
        return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


#: the checkout this module lives in; config paths inside it are hashed relative to it
REPO = Path(__file__).resolve().parents[2]


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository when it lies inside it, else unchanged."""
    p = Path(path)
    return p.relative_to(REPO).as_posix() if p.is_absolute() and p.is_relative_to(REPO) else path


def _repo_relative_spec(spec: str) -> str:
    scheme, _, arg = spec.partition(":")
    return f"{scheme}:{_repo_relative(arg)}" if scheme in PATH_SCHEMES and arg else spec


# --------------------------------------------------------------------------------------------------
# reading YAML


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[ExperimentConfig, Path]:
    """Read a YAML config, apply ``--set key=value`` overrides, validate, resolve relative paths.

    Parameters
    ----------
    path : str or PathLike
        The YAML file.
    overrides : list of str, optional
        ``key=value`` items, e.g. ``analyses.heads.max_sentences=50``; the value is read as YAML.

    Returns
    -------
    (ExperimentConfig, Path)
        The validated config (``out`` and data paths absolute) and the config file's folder.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "exp.yaml").write_text("name: x\\nseed: 0\\nout: out\\nmodels: [tiny-llama]\\n")
    >>> cfg, base = load_config(folder / "exp.yaml", ["seed=3"])
    >>> cfg.seed, cfg.out == str(base / "out")
    (3, True)
    """
    path = Path(path)
    raw = read_yaml(path)
    for item in overrides or ():
        _apply_override(raw, item)
    cfg = validate_config(raw, where=str(path))
    base = path.resolve().parent
    return resolve_paths(cfg, base), base


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file; errors name the file and line.

    Only plain YAML is read (``yaml.SafeLoader``), and aliases (``*name``) may repeat at most
    ``MAX_ALIAS_VALUES`` values in all, so a small file cannot expand into a huge value (an "alias
    bomb") before it is validated.

    Parameters
    ----------
    path : Path
        A YAML file holding a mapping (an experiment config or a sweep file).

    Returns
    -------
    dict
        The mapping (``{}`` for an empty file).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.yaml"
    >>> _ = path.write_text("layers: &l [0, 1]\\nagain: *l\\n")
    >>> read_yaml(path)
    {'layers': [0, 1], 'again': [0, 1]}
    """
    if not path.exists():
        raise ProbekitError(f"file {path} does not exist", fix="check the path")
    try:
        raw = load_yaml_text(path.read_text(), str(path)) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ProbekitError(f"not valid YAML: {getattr(err, 'problem', err)}", where=where) from None
    except RecursionError:
        raise ProbekitError("the YAML is nested too deeply", where=str(path)) from None
    if not isinstance(raw, dict):
        raise ProbekitError("the file must be a mapping of keys to values", where=str(path))
    return raw


class _BoundedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that counts the values aliases repeat and refuses a file past the bound."""

    def __init__(self, text: str, where: str):
        super().__init__(text)
        self.where = where
        self.sizes: dict[int, int] = {}  # id(node) -> values in the node once aliases are expanded
        self.repeated = 0

    def compose_node(self, parent, index):
        if not self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode)
                else []
            )
            self.sizes[id(node)] = 1 + sum(self.sizes[id(c)] for c in children)
            return node
        event = self.peek_event()
        node = super().compose_node(parent, index)
        where = f"{self.where}:{event.start_mark.line + 1}"
        if id(node) not in self.sizes:  # the alias is inside the value it names
            raise ProbekitError(
                f"YAML alias *{event.anchor} refers to a value that contains it",
                where=where,
                fix="write the value out instead of using the alias",
            )
        self.repeated += self.sizes[id(node)]
        if self.repeated > MAX_ALIAS_VALUES:
            raise ProbekitError(
                f"YAML aliases repeat more than {MAX_ALIAS_VALUES} values (alias "
                f"*{event.anchor}); a config is refused before it expands that far",
                where=where,
                fix="write the values out, or use fewer nested aliases",
            )
        return node


def load_yaml_text(text: str, where: str) -> Any:
    """One YAML document from ``text`` with `read_yaml`'s alias bound (``where`` names it in errors)."""
    loader = _BoundedLoader(text, where)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short repr of a possibly huge value, for error messages (never more than ``limit`` characters).

    Examples
    --------
    >>> excerpt("abc")
    "'abc'"
    >>> len(excerpt(list(range(10_000)))) <= 80
    True
    """
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxtuple, short.maxset = 3, 8, 8, 8, 8
    short.maxstring = short.maxother = short.maxlong = limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# validating and resolving


def validate_config(raw: dict, where: str = "config") -> ExperimentConfig:
    """An `ExperimentConfig` from a raw mapping; the first problem becomes a `ProbekitError`.

    An unknown key gets the nearest valid key suggested, and a rejected value is quoted in at most
    ``EXCERPT_CHARS`` characters (`validation_error`).

    Parameters
    ----------
    raw : dict
        The mapping read from YAML (with overrides applied).
    where : str
        What the error names as the place (the file, or a sweep run).

    Returns
    -------
    ExperimentConfig

    Examples
    --------
    >>> validate_config({"name": "x", "seed": 0, "out": "o", "models": ["tiny-bert"]}).models
    ['tiny-bert']
    >>> validate_config({"name": "x", "seed": 0, "out": "o", "modles": ["tiny-bert"]})
    Traceback (most recent call last):
    ...
    probekit.errors.ProbekitError: unknown config key 'modles' (at config)
      what to do: did you mean 'models'?
    """
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise validation_error(
            err, ExperimentConfig, kind="config", where=where, reference="the config reference in the README"
        ) from None


def validation_error(
    err: ValidationError, root: type[BaseModel], *, kind: str, where: str, reference: str
) -> ProbekitError:
    """pydantic's first problem as a `ProbekitError` that names the dotted key (used for configs and
    sweep files).

    An unknown key comes first (a typo explains the errors after it) with the nearest valid key of its
    section; a missing key is named without quoting the section it is missing from; any other rejected
    value is quoted in at most ``EXCERPT_CHARS`` characters. ``kind`` is the word before "key" and
    ``reference`` the place the fix points to.
    """
    first = min(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    loc = first["loc"]
    key = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1], root)
        known = list(parent.model_fields) if parent else []
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        fix = (
            f"did you mean {'.'.join([*map(str, loc[:-1]), guess[0]])!r}?"
            if guess
            else f"valid keys here: {', '.join(known)}"
        )
        return ProbekitError(f"unknown {kind} key {key!r}", where=where, fix=fix)
    if first["type"] == "missing":  # its input is the whole section: do not quote it
        return ProbekitError(
            f"{kind} key {key!r}: {first['msg']}", where=where, fix=f"add it (see {reference})"
        )
    return ProbekitError(
        f"{kind} key {key!r}: {first['msg']} (got {excerpt(first.get('input'))})",
        where=where,
        fix=f"see {reference}",
    )


def _model_at(loc, root: type[BaseModel] = ExperimentConfig) -> type[BaseModel] | None:
    """The pydantic model of the section at ``loc`` (e.g. ``("analyses", "probes", 0)``), if it is one."""
    model: type[BaseModel] = root
    for part in loc:
        if isinstance(part, int):  # an item of a list, e.g. analyses.probes.0
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [
            a for a in _flatten_type(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return None
        model = candidates[0]
    return model


def _flatten_type(annotation) -> list:
    """All classes inside ``X | None``, ``list[X]`` and the like."""
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _flatten_type(a)]


def _apply_override(raw: dict, item: str) -> None:
    """``analyses.heads.max_sentences=50`` -> raw["analyses"]["heads"]["max_sentences"] = 50 (YAML-typed).

    A number picks a list item: ``analyses.probes.0.seeds=[0]``."""
    if "=" not in item:
        raise ProbekitError(
            f"--set {item!r} is not key=value", fix="e.g. --set analyses.heads.max_sentences=50"
        )
    key, value = item.split("=", 1)
    where = f"--set {key}"
    try:
        parsed = load_yaml_text(value, where)
    except yaml.YAMLError as err:
        raise ProbekitError(f"not valid YAML: {getattr(err, 'problem', err)}", where=where) from None
    set_dotted(raw, key.strip(), parsed, where=where)


def set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    """``analyses.claims.n_perm`` -> raw["analyses"]["claims"]["n_perm"] = value; a number picks a list
    item (``analyses.probes.0.data``). Missing sections are created.

    Examples
    --------
    >>> raw = {"analyses": {"probes": [{"data": "svo"}]}}
    >>> set_dotted(raw, "analyses.probes.0.data", "bank", where="example")
    >>> set_dotted(raw, "analyses.claims.n_perm", 50, where="example")
    >>> raw
    {'analyses': {'probes': [{'data': 'bank'}], 'claims': {'n_perm': 50}}}
    """
    parts = key.split(".")
    node: Any = raw
    part: str | int  # a list index once node is a list
    for i, part in enumerate(parts):
        here = repr(".".join(parts[:i])) if i else "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ProbekitError(
                    f"key {key!r}: {here} is a list of {len(node)} items, so {part!r} must "
                    f"be an index 0..{len(node) - 1}",
                    where=where,
                    fix="e.g. analyses.probes.0.data for the first probes entry",
                )
            part = int(part)  # the key part becomes a list index
        elif not isinstance(node, dict):
            raise ProbekitError(
                f"key {key!r}: {here} is a value, not a section",
                where=where,
                fix="set a leaf key, e.g. analyses.claims.n_perm",
            )
        if i == len(parts) - 1:
            node[part] = value
            return
        if (
            isinstance(node, dict) and node.get(part) is None
        ):  # missing, or `check_attention:` with no options
            node[part] = {}
        node = node[part]


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Resolve ``out`` and the paths inside data specs against the config file's folder ``base``."""
    cfg.out = str((base / cfg.out).resolve())
    cfg.data = {k: resolve_spec(v, base) for k, v in cfg.data.items()}
    cfg.optional_data = {k: resolve_spec(v, base) for k, v in cfg.optional_data.items()}
    return cfg


def resolve_spec(spec: str, base: Path) -> str:
    """Make the path in ``ud:``/``blimp:``/``text:`` specs absolute, relative to the config folder.

    Examples
    --------
    >>> resolve_spec("ud:data/en.conllu", Path("/work/experiments"))
    'ud:/work/experiments/data/en.conllu'
    >>> resolve_spec("template:svo_adj?n=20", Path("/work/experiments"))
    'template:svo_adj?n=20'
    """
    scheme, _, arg = spec.partition(":")
    if scheme in PATH_SCHEMES and arg and not Path(arg).expanduser().is_absolute():
        return f"{scheme}:{(base / arg).resolve()}"
    return spec


# --------------------------------------------------------------------------------------------------
# the reference table in the README


def _type_name(annotation) -> str:
    """``Literal['a', 'b'] | None`` -> ``'a' | 'b' | None``, ``list[int]`` -> ``list[int]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """Markdown reference of every config field, generated from the pydantic models (for the README).

    Returns
    -------
    str
        One table per section (top level, then each ``analyses.<name>``); ``scripts/update_readme.py``
        pastes it into the README.

    Examples
    --------
    >>> print(config_reference().splitlines()[0])
    **`top level`** — One experiment: models × data × analyses, with an explicit seed.
    """
    lines = []
    sections: list[tuple[str, type[BaseModel]]] = [("top level", ExperimentConfig)]
    sections += [  # each analyses.<k> is a pydantic model: _model_at is not None
        (
            f"analyses.{k}" + (" (a list of these)" if k == "probes" else ""),
            cast(type[BaseModel], _model_at(("analyses", k))),
        )
        for k in Analyses.model_fields
    ]
    for title, model in sections:
        lines.append(
            f"**`{title}`**" + (f" — {model.__doc__.strip().splitlines()[0]}" if model.__doc__ else "")
        )
        lines.append("")
        lines.append("| key | type | default | meaning |")
        lines.append("|---|---|---|---|")
        for key, field in model.model_fields.items():
            if key == "analyses" and model is ExperimentConfig:
                continue
            default = (
                "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            )
            ann = _type_name(field.annotation)
            lines.append(f"| `{key}` | `{ann}` | {default} | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)
