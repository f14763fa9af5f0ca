"""TransformerLens hook names, built in one place.

Every analysis names hooks through these functions, so a rename in TransformerLens (or a model family
with other names) is one edit here. The names are TransformerBridge v4's (``blocks.{layer}.…``).
"""

from __future__ import annotations

#: hooks that fire on entering the final norm / LM head; capture stops there (no head is computed)
HEAD_ENTRY = ("ln_final.hook_in", "mlm_head.hook_in", "unembed.hook_in")
#: the input of the unembedding (the residual stream the LM head reads)
UNEMBED_IN = "unembed.hook_in"
PATTERN_SUFFIX = "attn.hook_pattern"
Z_SUFFIX = "hook_z"


def block(layer: int, name: str) -> str:
    """``blocks.{layer}.{name}``, e.g. ``block(3, "attn.hook_pattern")``."""
    return f"blocks.{layer}.{name}"


def resid(layer: int, kind: str = "resid_post") -> str:
    """Residual stream of block ``layer``: ``kind`` is ``resid_pre``, ``resid_mid`` or ``resid_post``."""
    return block(layer, f"hook_{kind}")


def pattern(layer: int) -> str:
    """Attention pattern ``[batch, head, q, k]`` of block ``layer``."""
    return block(layer, PATTERN_SUFFIX)


def z(layer: int) -> str:
    """Per-head attention output before W_O, ``[batch, pos, head, d_head]``."""
    return block(layer, "attn.hook_z")


def attn(layer: int, name: str) -> str:
    """Any attention hook of block ``layer``: ``attn(0, "hook_rot_q")`` is ``blocks.0.attn.hook_rot_q``."""
    return block(layer, f"attn.{name}")


def is_pattern(name: str) -> bool:
    return name.endswith(PATTERN_SUFFIX)


def is_z(name: str) -> bool:
    return name.endswith(Z_SUFFIX)
