"""What a model returns, read as logits or features: a tensor, a tuple/list (its first element), a dict or a
Hugging Face ``ModelOutput`` (its ``logits``, else its first tensor).

``adapt_outputs`` registers ``logits_hook`` on a model, so every caller (training, the stacked path, the
teacher's cached outputs, export) sees a plain logits tensor without a wrapper module: the model's
state_dict keys and module paths stay its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import KdsearchError

HIDDEN_STATE = re.compile(r"^hidden_states\[(-?\d+)\]$")  # feature_layer naming one of a model's hidden_states


def _describe(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {', '.join(map(str, list(out)[:6]))}"
    return f"a {type(out).__name__}"


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's output: the tensor itself, ``out.logits`` / ``out["logits"]``, a tuple's or
    list's first element; KdsearchError naming what came back otherwise."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise KdsearchError(
        f"returns {_describe(out)}; kdsearch reads logits from a tensor, a tuple or list (first element), or a dict "
        "or ModelOutput with 'logits'"
    )


def first_tensor(out: Any) -> torch.Tensor:
    """A module's output as one tensor, for feature methods: the tensor, a tuple's/list's first element, or the
    first tensor value of a dict or ``ModelOutput`` (``last_hidden_state`` for Hugging Face encoders)."""
    if isinstance(out, torch.Tensor):
        return out
    values = list(out.values()) if isinstance(out, Mapping) else list(out) if isinstance(out, (tuple, list)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise KdsearchError(f"the feature layer {_describe(out)} holds no tensor; name another feature_layer")


def hidden_state(out: Any, index: int) -> torch.Tensor:
    """``out.hidden_states[index]`` of a Hugging Face output (the model runs with ``output_hidden_states``)."""
    states = out.get("hidden_states") if isinstance(out, Mapping) else getattr(out, "hidden_states", None)
    if not states:
        raise KdsearchError(
            f"feature_layer 'hidden_states[{index}]': the model's output ({_describe(out)}) has no hidden_states; "
            "it must be a Hugging Face model (or return a dict with hidden_states)"
        )
    if not -len(states) <= index < len(states):
        raise KdsearchError(
            f"feature_layer 'hidden_states[{index}]': the model has {len(states)} hidden states "
            f"(hidden_states[0] to hidden_states[{len(states) - 1}])"
        )
    return states[index]


def logits_hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor | None:
    """Forward hook: replace a non-tensor output with its logits (``None``, i.e. unchanged, for a tensor)."""
    return None if isinstance(output, torch.Tensor) else logits_of(output)


def adapt_outputs(model: nn.Module) -> nn.Module:
    """``model`` itself, its forward now returning logits whatever it returned (a tensor stays as it is); models
    compiled by TorchScript, which take no Python hooks, are returned unchanged."""
    if isinstance(model, torch.jit.ScriptModule) or getattr(model, "_kdsearch_logits_hook", False):
        return model
    model.register_forward_hook(logits_hook)
    model._kdsearch_logits_hook = True  # a plain attribute: copies of the model keep it with the hook
    return model
