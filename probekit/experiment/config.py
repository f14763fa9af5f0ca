"""Experiment configs: a YAML file -> a validated `ExperimentConfig` -> a run folder of tables and plots.

A config names the models, the data (named spec strings), the analyses with their options, the seed
and the output folder. `run_experiment` runs every (analysis, model, data) *stage*, writes its tables
as CSV + Markdown + LaTeX (atomically) and marks it done with the hash of the options that produced
it, so a rerun after a kill resumes from the finished stages and a changed option reruns only what it
touches. It ends with ``manifest.json`` (resolved config, its hash, package versions, git commit,
machine, per-stage timings) and ``REPORT.md``.

The same config and seed give byte-identical CSVs: every analysis is seeded and the tables are written
with a fixed float format.

Config rules: unknown keys are rejected with the nearest valid key suggested; types are checked;
relative paths (``out`` and the paths inside ``ud:``/``blimp:``/``text:`` specs) resolve against the
config file's folder; the seed is explicit. Data listed under ``optional_data`` is used only when its
path exists (e.g. the shared UD/BLiMP reference data); analyses that name it are skipped, and the
report says so, when it is absent.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from probekit.errors import ProbekitError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckAttentionOptions(_Strict):
    """Claim C1: recompute softmax(q·k/√d) from hook_rot_q/k and compare with hook_pattern."""

    sentence: str = Field("The curious cat explored the mysterious room.", description="sentence to run")


class ClaimsOptions(_Strict):
    """Claims C2/C3: the "bank" and "explored" examples, head by head."""

    bank: str = Field("seed:bank", description="data with the two-sense 'bank' sentence")
    bank_template: str = Field("template:bank_sense", description="data for the scaled-up cue-attention test")
    explored: str = Field("seed:explored", description="data with 'The curious cat explored the mysterious room.'")
    n_perm: int = Field(200, ge=10, description="permutations for the best-head null")


class HeadsOptions(_Strict):
    """Claim C4: score every head on every relation, with offset/random-init/permutation baselines."""

    data: list[str] = Field(..., description="data names or specs to score on")
    relations: list[str] | None = Field(None, description="relations (None = nsubj, amod, det, obj + positional)")
    max_sentences: int | None = Field(None, ge=1, description="first N sentences of each dataset")
    random_baseline: bool = Field(True, description="also score random:<model>")
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
        "random", description="train/test split: held-out sentences, held-out word types, or both as a list")
    max_sentences: int | None = Field(None, ge=1, description="first N sentences")
    random_baseline: bool = Field(True, description="also probe random:<model>")


class ScoreOptions(_Strict):
    """Claim C5: minimal-pair accuracy (sum of token log-probs), per paradigm. Causal LMs only."""

    data: list[str] = Field(..., description="data names or specs holding minimal pairs")
    max_pairs: int | None = Field(None, ge=1, description="first N pairs of each paradigm")


class AblateOptions(_Strict):
    """Causal test of C4: ablate the top-k heads for a relation vs layer-matched random heads."""

    data: str = Field(..., description="minimal-pair data to measure the effect on")
    heads_data: str = Field(..., description="sentence data to pick the top-k heads on")
    relation: str = Field("nsubj", description="relation whose heads are ablated")
    direction: Literal["dep_to_head", "head_to_dep"] = Field("head_to_dep", description="direction to rank heads by")
    top_k: int = Field(3, ge=1, description="number of heads")
    n_draws: int = Field(20, ge=2, description="random layer-matched head sets")
    method: Literal["zero", "mean", "resample"] = Field("mean", description="ablation method")
    max_pairs: int | None = Field(200, ge=1, description="first N pairs")


class Analyses(_Strict):
    check_attention: CheckAttentionOptions | None = None
    claims: ClaimsOptions | None = None
    heads: HeadsOptions | None = None
    probes: list[ProbesOptions] | None = None
    score: ScoreOptions | None = None
    ablate: AblateOptions | None = None

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
    """One experiment: models × data × analyses, with an explicit seed."""

    name: str = Field(..., description="experiment name (used in titles)")
    seed: int = Field(..., description="seed for every random choice (splits, bootstraps, permutations, random-init)")
    out: str = Field(..., description="output folder, relative to the config file")
    models: list[str] = Field(..., min_length=1, description="model names (see `probekit models`)")
    data: dict[str, str] = Field(default_factory=dict, description="named data specs, e.g. svo: template:svo_adj")
    optional_data: dict[str, str] = Field(default_factory=dict,
                                          description="named specs used only if their path exists")
    batch_size: int = Field(16, ge=1, description="sentences per forward pass")
    analyses: Analyses = Field(default_factory=Analyses, description="what to run")

    def config_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# loading and validating


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[ExperimentConfig, Path]:
    """Read a YAML config, apply ``--set key=value`` overrides, validate, resolve relative paths."""
    path = Path(path)
    raw = read_yaml(path)
    for item in overrides or ():
        _apply_override(raw, item)
    cfg = validate_config(raw, where=str(path))
    base = path.resolve().parent
    return resolve_paths(cfg, base), base


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file (``yaml.safe_load``); errors name the file and line."""
    if not path.exists():
        raise ProbekitError(f"file {path} does not exist", fix="check the path")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ProbekitError(f"not valid YAML: {getattr(err, 'problem', err)}", where=where) from None
    if not isinstance(raw, dict):
        raise ProbekitError("the file must be a mapping of keys to values", where=str(path))
    return raw


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Resolve ``out`` and the paths inside data specs against the config file's folder ``base``."""
    cfg.out = str((base / cfg.out).resolve())
    cfg.data = {k: resolve_spec(v, base) for k, v in cfg.data.items()}
    cfg.optional_data = {k: resolve_spec(v, base) for k, v in cfg.optional_data.items()}
    return cfg


def validate_config(raw: dict, where: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            parent = _model_at(first["loc"][:-1])
            known = list(parent.model_fields) if parent else []
            guess = difflib.get_close_matches(str(first["loc"][-1]), known, n=1)
            fix = f"did you mean {'.'.join([*map(str, first['loc'][:-1]), guess[0]])!r}?" if guess else \
                f"valid keys here: {', '.join(known)}"
            raise ProbekitError(f"unknown config key {key!r}", where=where, fix=fix) from None
        raise ProbekitError(f"config key {key!r}: {first['msg']} (got {first.get('input')!r})", where=where,
                            fix="see the config reference in the README") from None


def _model_at(loc) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if isinstance(part, int):  # an item of a list, e.g. analyses.probes.0
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [a for a in _flatten_type(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
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
        raise ProbekitError(f"--set {item!r} is not key=value", fix="e.g. --set analyses.heads.max_sentences=50")
    key, value = item.split("=", 1)
    set_dotted(raw, key.strip(), yaml.safe_load(value), where=f"--set {key}")


def set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    """``analyses.claims.n_perm`` -> raw["analyses"]["claims"]["n_perm"] = value; a number picks a list
    item (``analyses.probes.0.data``). Missing sections are created."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        here = repr(".".join(parts[:i])) if i else "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ProbekitError(f"key {key!r}: {here} is a list of {len(node)} items, so {part!r} must "
                                    f"be an index 0..{len(node) - 1}", where=where,
                                    fix="e.g. analyses.probes.0.data for the first probes entry")
            part = int(part)
        elif not isinstance(node, dict):
            raise ProbekitError(f"key {key!r}: {here} is a value, not a section", where=where,
                                fix="set a leaf key, e.g. analyses.claims.n_perm")
        if i == len(parts) - 1:
            node[part] = value
            return
        if isinstance(node, dict) and node.get(part) is None:  # missing, or `check_attention:` with no options
            node[part] = {}
        node = node[part]


def resolve_spec(spec: str, base: Path) -> str:
    """Make the path in ``ud:``/``blimp:``/``text:`` specs absolute, relative to the config folder."""
    scheme, _, arg = spec.partition(":")
    if scheme in ("ud", "blimp", "text") and arg and not Path(arg).expanduser().is_absolute():
        return f"{scheme}:{(base / arg).resolve()}"
    return spec


def spec_path_exists(spec: str) -> bool:
    scheme, _, arg = spec.partition(":")
    return scheme not in ("ud", "blimp", "text") or Path(arg).exists()


def display_spec(spec: str) -> str:
    """A spec without machine-specific absolute paths, for tables and reports."""
    scheme, _, arg = spec.partition(":")
    if scheme in ("ud", "blimp", "text"):
        p = Path(arg)
        return f"{scheme}:{'/'.join(p.parts[-2:])}"
    return spec


# --------------------------------------------------------------------------------------------------
# running


class Run:
    """The state of one run: its folder, the data resolver, stage bookkeeping and timings."""

    def __init__(self, cfg: ExperimentConfig, out: Path, progress: bool = True, load_model=None):
        from probekit.models import load_model as default_loader

        self.cfg, self.out, self.progress = cfg, out, progress
        self._load_model = load_model or default_loader
        self.timings: dict[str, float] = {}
        self.skipped: list[str] = []
        self.reused: list[str] = []
        self._models: dict[str, Any] = {}
        self._data: dict[str, Any] = {}
        self.git = _git_state()  # the code this run starts with (the tree may change while it runs)

    def spec(self, name_or_spec: str) -> str | None:
        """A data name -> its spec (None if it is optional and absent); anything else is a spec."""
        if name_or_spec in self.cfg.data:
            return self.cfg.data[name_or_spec]
        if name_or_spec in self.cfg.optional_data:
            spec = self.cfg.optional_data[name_or_spec]
            return spec if spec_path_exists(spec) else None
        return name_or_spec

    def dataset(self, name_or_spec: str, max_items: int | None = None):
        from probekit.data import load_dataset

        spec = self.spec(name_or_spec)
        key = (spec, max_items)
        if key not in self._data:
            self._data[key] = load_dataset(spec, max_sentences=max_items, seed=self.cfg.seed)
        return self._data[key]

    def model(self, name: str):
        """Load (or reuse) a model; ``random:<name>`` baselines are models too."""
        if name not in self._models:
            if len(self._models) >= 2:  # keep memory bounded on small machines
                self._models.pop(next(iter(self._models)))
            self._models[name] = self._load_model(name, seed=self.cfg.seed)
        return self._models[name]

    def stage(self, analysis: str, model: str, data: str, options: dict, fn) -> Path | None:
        """Run ``fn(stage_dir)`` unless a finished stage with the same options exists."""
        folder = self.out / analysis / (f"{_slug(model)}__{_slug(data)}" if data else _slug(model))
        digest = hashlib.sha256(json.dumps({"model": model, "data": data, "seed": self.cfg.seed,
                                            "batch_size": self.cfg.batch_size, "options": options},
                                           sort_keys=True, default=str).encode()).hexdigest()[:16]
        marker = folder / ".done"
        label = f"{analysis}/{folder.name}"
        done = marker.read_text().split() if marker.exists() else []
        if done and done[0] == digest:
            # the time it took when it was computed, so the manifest still shows what each stage costs
            self.timings.setdefault(label, float(done[1]) if len(done) > 1 else float("nan"))
            self.reused.append(label)
            _log(f"[skip] {label} (finished earlier)")
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        _log(f"[run ] {label}")
        start = time.perf_counter()
        fn(folder)
        self.timings[label] = round(time.perf_counter() - start, 2)
        from probekit.report import atomic_write_text

        atomic_write_text(marker, f"{digest} {self.timings[label]}\n")
        return folder


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in display_spec(text)).strip("-")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_experiment(config: str | os.PathLike | ExperimentConfig, out: str | os.PathLike | None = None,
                   overrides: list[str] | None = None, progress: bool = True, load_model=None) -> Path:
    """Run every stage of a config; return the run folder (which holds REPORT.md).

    ``load_model`` replaces `probekit.models.load_model` for this run (a sweep worker passes one that
    keeps models resident across runs)."""
    from probekit.experiment import stages
    from probekit.experiment.verdicts import build_report

    if isinstance(config, ExperimentConfig):
        cfg = config
    else:
        cfg, _ = load_config(config, overrides)
    out_dir = Path(out).resolve() if out else Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(cfg, out_dir, progress, load_model)
    total = time.perf_counter()
    for analysis in Analyses.model_fields:
        options = getattr(cfg.analyses, analysis)
        if options is not None:
            getattr(stages, analysis)(run, options)
    run.timings["total"] = round(time.perf_counter() - total, 2)
    write_manifest(run)
    build_report(out_dir)
    return out_dir


def write_manifest(run: Run) -> Path:
    from probekit.report import atomic_write_text

    packages = {}
    for dist in ("probekit-mi", "torch", "transformer-lens", "transformers", "numpy", "pandas", "scikit-learn",
                 "scipy", "pydantic"):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            packages[dist] = None
    manifest = {
        "name": run.cfg.name,
        "config": json.loads(run.cfg.model_dump_json()) | {"out": display_path(run.cfg.out)},
        "config_hash": run.cfg.config_hash(),
        "seed": run.cfg.seed,
        "skipped": list(dict.fromkeys(run.skipped)),
        "reused_stages": run.reused,
        "packages": packages,
        "git_commit": run.git["commit"],
        "git_dirty": run.git["dirty"],
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "torch_threads": _torch_threads()},
        # a stage reused from a run made before its cost was recorded has no timing (null)
        "timings_s": {k: (None if v != v else v) for k, v in run.timings.items()},
    }
    manifest["config"]["data"] = {k: display_spec(v) for k, v in run.cfg.data.items()}
    manifest["config"]["optional_data"] = {k: display_spec(v) for k, v in run.cfg.optional_data.items()}
    return atomic_write_text(run.out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def display_path(path: str) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def _git_state() -> dict:
    """The checkout's HEAD commit and whether the code that makes results — the tracked files of
    ``probekit/`` and ``experiments/`` — differs from it (``dirty``); both None outside a git checkout
    (e.g. an installed wheel)."""
    package = Path(__file__).resolve().parent

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=package, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", "../experiments") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _type_name(annotation) -> str:
    """``Literal['a', 'b'] | None`` -> ``'a' | 'b' | None``, ``list[int]`` -> ``list[int]``."""
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, __import__("types").UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """Markdown reference of every config field, generated from the pydantic models (for the README)."""
    lines = []
    sections = [("top level", ExperimentConfig)]
    sections += [(f"analyses.{k}" + (" (a list of these)" if k == "probes" else ""), _model_at(("analyses", k)))
                 for k in Analyses.model_fields]
    for title, model in sections:
        lines.append(f"**`{title}`**" + (f" — {model.__doc__.strip().splitlines()[0]}" if model.__doc__ else ""))
        lines.append("")
        lines.append("| key | type | default | meaning |")
        lines.append("|---|---|---|---|")
        for key, field in model.model_fields.items():
            if key == "analyses" and model is ExperimentConfig:
                continue
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            ann = _type_name(field.annotation)
            lines.append(f"| `{key}` | `{ann}` | {default} | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)
