"""Capture's forward pass: the hooks it reads, filled by plain Hugging Face modules or by the bridge.

`probekit.activations.capture` reads three kinds of hook per block: ``hook_resid_pre`` (the block's
input), ``hook_resid_post`` (its output) and ``attn.hook_pattern`` (the softmax weights). A plain Hugging
Face model gives all three through ordinary torch forward hooks, without TransformerLens' per-module hook
points and copies: on the bundled models, capture through the bridge costs 1.06x (SmolLM2) and 1.20x
(MiniLM) the head-less forward, through plain modules 1.04x and 1.10x (``results/benchmarks``). So
capture runs one of two forwards, both named by TransformerLens' hook names and both returning
``{hook name: tensor}``:

- `HfForward`: a second, weightless module tree of the same Hugging Face class, built on the meta
  device, whose parameters and buffers are then set to the bridge's own tensor objects (no copy, no
  second load). Hooks: a block's input and output, and the second output of its eager
  attention module. Used for the architectures whose hooks are checked bit-identical to the bridge's
  (`ARCHITECTURES`; ``tests/unit/test_forward.py``, ``scripts/check_hf_forward.py``), and only
  while no hook is attached to the bridge, whose forward would apply it.
- `BridgeForward`: the bridge's ``run_with_cache`` with capture's filter; every other case (``resid_mid``,
  any other architecture, a model placed by ``device_map``, hooks on the bridge).

Both stop after the last requested block: at the next block, or on entering the final norm / LM or MLM
head, whose output no capture reads. `forward_for` picks one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from probekit.activations import hooks as hook_names

#: Hugging Face classes whose `HfForward` hooks are bit-identical to the bridge's (tests/unit/test_forward.py)
ARCHITECTURES = ("LlamaForCausalLM", "Gemma3ForCausalLM", "BertForMaskedLM")
#: the hook kinds `HfForward` fills; anything else goes through the bridge
HF_HOOKS = ("hook_resid_pre", "hook_resid_post", hook_names.PATTERN_SUFFIX)
#: bridge hook points that fire on entering the final norm / LM or MLM head: `BridgeForward` stops there
HEAD_ENTRY_HOOKS = hook_names.HEAD_ENTRY

Cache = dict[str, torch.Tensor]


class _EndForwardError(Exception):
    """Raised by a pre-hook to end the forward once every requested hook has fired."""


class HfForward:
    """Capture's hooks from a plain Hugging Face module tree that shares the bridge's weights.

    ``body`` is the model without its head (``LlamaModel``, ``Gemma3TextModel``, ``BertModel``); the
    hook ``blocks.{l}.hook_resid_pre`` is block l's input, ``blocks.{l}.hook_resid_post`` its output and
    ``blocks.{l}.attn.hook_pattern`` the weights ``[batch, head, q, k]`` its eager attention returns.
    The forward ends on entering block ``stop`` (or the final norm, when ``stop`` is past the last block).
    """

    def __init__(self, body, names: set[str], stop: int):
        self.body = body
        self.names = names
        self.stop = stop

    @staticmethod
    def blocks(body) -> tuple[list, list]:
        """(blocks, their attention modules) of a head-less Hugging Face body."""
        blocks = body.layers if hasattr(body, "layers") else body.encoder.layer
        attns = [b.self_attn if hasattr(b, "self_attn") else b.attention.self for b in blocks]
        return list(blocks), attns

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Cache:
        out: Cache = {}
        blocks, attns = self.blocks(self.body)

        def keep(name: str, pick: Callable) -> Callable:
            return lambda module, args, *rest: out.__setitem__(name, pick(args, *rest))

        def end(module, args, kwargs):
            raise _EndForwardError

        def first_input(args, kwargs):
            return args[0] if args else kwargs["hidden_states"]

        def first_output(args, output):
            return output[0] if isinstance(output, tuple) else output

        def weights(args, output):
            return output[1]  # eager attention returns (output, softmax weights)

        handles = []
        for i in range(min(self.stop, len(blocks))):
            pre, post, pattern = (hook_names.block(i, h) for h in HF_HOOKS)
            if pre in self.names:
                handles.append(blocks[i].register_forward_pre_hook(keep(pre, first_input), with_kwargs=True))
            if post in self.names:
                handles.append(blocks[i].register_forward_hook(keep(post, first_output)))
            if pattern in self.names:
                handles.append(attns[i].register_forward_hook(keep(pattern, weights)))
        if self.stop < len(blocks):
            handles.append(blocks[self.stop].register_forward_pre_hook(end, with_kwargs=True))
        elif isinstance(getattr(self.body, "norm", None), torch.nn.Module):
            handles.append(self.body.norm.register_forward_pre_hook(end, with_kwargs=True))
        try:
            self.body(input_ids=input_ids, attention_mask=attention_mask)
        except _EndForwardError:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return out


class BridgeForward:
    """Capture's hooks from the bridge's ``run_with_cache``, stopping after block ``stop - 1``.

    With the last block captured there is no block to stop at: a hook on entering the final norm / head
    raises the bridge's ``StopAtLayerException``, which its forward catches (as for ``stop_at_layer``),
    and ``run_with_cache`` returns the cache filled so far: every requested hook fires before the head.
    Enter it (``with``) around the batches: the head stops are attached for that long.
    """

    def __init__(self, model, names: set[str], stop: int):
        self.bridge = model.bridge
        self.names = names
        self.stop_at_layer = stop if stop < model.n_layers else None
        self.head_stops = (
            []
            if self.stop_at_layer is not None
            else [(name, stop_here) for name in HEAD_ENTRY_HOOKS if name in self.bridge.hook_dict]
        )

    @contextlib.contextmanager
    def attached(self) -> Iterator[BridgeForward]:
        with self.bridge.hooks(fwd_hooks=self.head_stops):
            yield self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Cache:
        _, cache = self.bridge.run_with_cache(
            input_ids,
            attention_mask=attention_mask,
            names_filter=lambda name: name in self.names,
            stop_at_layer=self.stop_at_layer,
        )
        return cache


def stop_here(tensor, *, hook):
    """Bridge forward hook: end the forward pass here; the bridge catches this exception and returns."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(tensor)


@contextlib.contextmanager
def forward_for(model, names: set[str], stop: int) -> Iterator[Callable[[torch.Tensor, torch.Tensor], Cache]]:
    """The forward capture runs for hooks ``names`` of blocks ``< stop``: `HfForward` where it applies
    (see the module docstring), else `BridgeForward`, attached for the ``with`` block."""
    body = model.hf_body if _hf_can_fill(model, names) else None
    if body is not None:
        yield HfForward(body, names, stop)
        return
    bridge = BridgeForward(model, names, stop)
    with bridge.attached():
        yield bridge


def _hf_can_fill(model, names: set[str]) -> bool:
    """Every name is one `HfForward` fills, the architecture is checked, and no hook is on the bridge."""
    hf = model.hf_model
    if type(hf).__name__ not in ARCHITECTURES or getattr(hf, "hf_device_map", None):
        return False
    if not all(name.split(".", 2)[-1] in HF_HOOKS for name in names):
        return False
    return not any(_has_user_hook(hp) for hp in model.bridge.hook_dict.values())


def _has_user_hook(hook_point) -> bool:
    """A hook someone attached: not one of the bridge's own permanent ones (for BERT it wires alias hook
    points such as ``blocks.{l}.hook_mlp_in`` that way, without changing the forward), and no torch hook
    added around ``add_hook``."""
    own = [h for h in hook_point.fwd_hooks if h.is_permanent]
    torch_hooks = len(hook_point._forward_hooks) + len(hook_point._forward_pre_hooks)
    return len(own) < len(hook_point.fwd_hooks) or torch_hooks > len(own) or bool(hook_point.bwd_hooks)


def plain_body(hf):
    """A head-less Hugging Face body of ``hf``'s class whose tensors are ``hf``'s own, or None.

    ``hf`` is the model the bridge wraps: its modules are bridge components, and its tensor names carry
    ``._original_component``. The body is built on the meta device, then every parameter and buffer is
    set to the bridged model's tensor of the same name, so it costs no memory for weights and computes
    with exactly the same numbers. None if any tensor of the body has no counterpart.
    (`probekit.Model.hf_body` keeps one per model.)
    """
    shared = {
        name.replace("._original_component", ""): tensor
        for name, tensor in [
            *hf.named_parameters(remove_duplicate=False),
            *hf.named_buffers(remove_duplicate=False),
        ]
    }
    with torch.device("meta"):
        plain = type(hf)._from_config(hf.config, attn_implementation="eager")
    body = plain.base_model
    prefix = plain.base_model_prefix
    for module_name, module in body.named_modules():
        local = [(n, True) for n, _ in module.named_parameters(recurse=False)]
        local += [(n, False) for n, _ in module.named_buffers(recurse=False)]
        for name, is_parameter in local:
            tensor = shared.get(".".join(part for part in (prefix, module_name, name) if part))
            if tensor is None or isinstance(tensor, torch.nn.Parameter) != is_parameter:
                return None
            setattr(module, name, tensor)  # the same Parameter / buffer object: shared, not copied
    return body.eval()
