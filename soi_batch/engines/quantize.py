"""The FP8 and int8 engines' shared steps: rowwise scales, and swapping the linear layers of
decoder blocks for quantised ones."""

from __future__ import annotations

from collections.abc import Callable

import torch


def replace_linears(decoder_layers: torch.nn.ModuleList, make: Callable[[torch.nn.Linear], torch.nn.Module]) -> int:
    """Replace every ``nn.Linear`` inside ``decoder_layers`` by ``make(linear)``, in place; returns how many."""
    count = 0
    for layer in decoder_layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, make(child))
                    count += 1
    return count


def rowwise_scale(rows: torch.Tensor, largest: float) -> torch.Tensor:
    """One symmetric scale per row of ``rows`` (float32, shape [n, 1]): its max-abs mapped to
    ``largest``, the format's largest value (a zero row gets a tiny scale, not a division by 0)."""
    return rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / largest


def copy_bias(module: torch.nn.Module, linear: torch.nn.Linear) -> None:
    """``linear``'s bias (frozen) and feature counts onto the quantised ``module`` that replaces it."""
    module.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
    module.in_features, module.out_features = linear.in_features, linear.out_features
