"""Swap the linear layers of decoder blocks for quantised ones (the FP8 and int8 engines' shared step)."""

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
