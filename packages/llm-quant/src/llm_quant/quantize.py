"""Quantizing a float model: calibration, then ``quantized_state_dict`` and
``convert_for_runtime`` (gpt-fast's two steps), or both at once with :func:`quantize_model`.

A quantized model carries ``model.quantization`` (a dict: method, scheme, the quantized
modules' names), which :func:`llm_core.save_model` writes into ``config.json``; loading such a
checkpoint rebuilds the same modules (see :mod:`llm_quant.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from llm_quant.linear import Int8Linear, Q4Linear, QuantLinear
from llm_quant.schemes import Scheme, quantize_int8, quantize_q4

METHOD = "llm-quant"  # the "method" of a checkpoint's "quantization" entry
Calibration = Mapping[str, torch.Tensor] | Iterable[torch.Tensor]


def _skipped(name: str, skip: Iterable[str]) -> bool:
    return any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in skip)


def quantizable_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Names of the ``nn.Linear`` modules that :func:`quantize_model` replaces: all but those
    named in ``skip`` (a name, a suffix after a dot, or a prefix before one) and an LM head
    tied to the embedding (it is the embedding table, which stays float)."""
    skip = tuple(skip)
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not _skipped(name, skip)
        and not (tied and name == "lm_head")
    ]


@torch.no_grad()
def collect_activation_stats(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    modules: Iterable[str] | None = None,
    max_batches: int | None = None,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``batches`` (token ids ``[B, T]``; at most ``max_batches``) and return,
    per linear layer, the mean squared input per input channel (float32 ``[in_features]``):
    the importance that :func:`quantize_q4` weights each channel's error with.

    ``modules``: the layers to watch (default: every ``nn.Linear``); ``forward(model, batch)``
    replaces ``model(batch)``. Hooks are removed afterwards, also on error. Raises
    ``ValueError`` when no batch was given.
    """
    named = dict(model.named_modules())
    names = (
        list(modules)
        if modules is not None
        else [n for n, m in named.items() if isinstance(m, nn.Linear)]
    )
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            sq = (x * x).sum(0)  # (in,)
            sums[name] = sums[name] + sq if name in sums else sq
            counts[name] += x.shape[0]

        return record

    handles = [named[n].register_forward_pre_hook(hook(n)) for n in names]
    seen = 0
    try:
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            (forward or (lambda m, b: m(b)))(model, batch)
            seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("calibration: no batches were given")
    return {n: sums[n] / counts[n] for n in names if counts[n]}


@torch.no_grad()
def quantized_state_dict(
    model: nn.Module,
    scheme: Scheme,
    *,
    calibration: Mapping[str, torch.Tensor] | None = None,
    skip: Iterable[str] = ("lm_head",),
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The quantized tensors of ``model``'s linear layers under ``scheme``: ``(state, names)``
    with ``state`` keyed like the converted model's state_dict (``<layer>.qweight``,
    ``.scales``, ``.mins``; biases as they are) and ``names`` the layers quantized.

    ``calibration``: per-layer input importance from :func:`collect_activation_stats` (q4
    uses it; int8 has no choice to make). ``progress(name)`` is called after each layer.
    Raises ``ValueError`` when a layer does not fit the scheme (q4: in_features not a multiple
    of the group size).
    """
    names = quantizable_linears(model, skip)
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name in names:
        layer = modules[name]
        w = layer.weight.detach()  # (N, K)
        if scheme.name == "int8":
            state[f"{name}.qweight"], state[f"{name}.scales"] = quantize_int8(w)
        else:
            importance = None if calibration is None else calibration.get(name)
            try:
                q, s, m = quantize_q4(w, scheme.group_size, scheme.zero_points, importance)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            state[f"{name}.qweight"], state[f"{name}.scales"] = q, s
            if m is not None:
                state[f"{name}.mins"] = m
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.detach()
        if progress is not None:
            progress(name)
    return state, names


def convert_for_runtime(model: nn.Module, scheme: Scheme, names: Iterable[str]) -> nn.Module:
    """Replace the linear layers ``names`` of ``model`` by empty quantized ones of ``scheme``
    (on the layers' device, 'meta' included), undo projection fusion, and record
    ``model.quantization``. Returns ``model``. Raises ``ValueError`` on an unknown layer."""
    names = list(names)
    modules = dict(model.named_modules())
    for name in names:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"quantization: {name!r} is not a linear layer of this model")
        device, dtype = layer.weight.device, layer.weight.dtype
        bias = layer.bias is not None
        if scheme.name == "int8":
            new: QuantLinear = Int8Linear(
                layer.in_features,
                layer.out_features,
                bias,
                activations=scheme.activations,
                device=device,
                dtype=dtype,
            )
        else:
            new = Q4Linear(
                layer.in_features,
                layer.out_features,
                bias,
                group_size=scheme.group_size,
                zero_points=scheme.zero_points,
                activations=scheme.activations,
                device=device,
                dtype=dtype,
            )
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
    for module in model.modules():
        for attr in ("qkv", "gate_up"):  # llm-core's fused projections hold the float weights
            if getattr(module, attr, None) is not None:
                setattr(module, attr, None)
    model.quantization = {"method": METHOD, "scheme": scheme.to_dict(), "modules": names}
    return model


def quantize_model(
    model: nn.Module,
    scheme: Scheme | str,
    calibration: Calibration | None = None,
    skip: Iterable[str] = ("lm_head",),
    *,
    progress: Callable[[str], None] | None = None,
) -> nn.Module:
    """Quantize ``model``'s linear layers in place with ``scheme`` (a :class:`Scheme`, or
    ``"int8"`` / ``"q4"`` with their defaults) and return it.

    ``calibration``: per-layer importance (:func:`collect_activation_stats`'s result), or
    token batches ``[B, T]`` to collect it from. ``skip``: layers left in float (see
    :func:`quantizable_linears`). ``progress(name)``: called after each layer. Raises
    ``ValueError`` on a bad scheme or a layer that does not fit it.
    """
    if isinstance(scheme, str):
        scheme = Scheme(scheme)
    stats: Mapping[str, torch.Tensor] | None = None
    if calibration is not None:
        if isinstance(calibration, Mapping):
            stats = calibration
        else:
            stats = collect_activation_stats(
                model, calibration, modules=quantizable_linears(model, skip)
            )
    state, names = quantized_state_dict(
        model, scheme, calibration=stats, skip=skip, progress=progress
    )
    convert_for_runtime(model, scheme, names)
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise RuntimeError(f"quantization produced unexpected tensors: {unexpected[:3]}")
    return model
