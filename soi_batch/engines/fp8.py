"""FP8 (e4m3) linear layers for the transformers engine: dynamic W8A8, one scale per row.

Each ``nn.Linear`` inside the decoder blocks is replaced once, at load time: its weight is
stored in float8_e4m3fn with one scale per output channel.  At run time every token's
activation row gets its own scale (its max-abs / 448), and the product runs through
``torch._scaled_mm`` with bf16 output (FP8 tensor cores on Hopper/Ada GPUs: twice the bf16
rate).  Embeddings, norms, attention and the label head stay in the model's dtype.
"""

from __future__ import annotations

import torch

from soi_batch.engines.quantize import copy_bias, replace_linears, rowwise_scale

FP8_MAX = 448.0
"""Largest finite float8_e4m3fn value."""


class Float8RowwiseLinear(torch.nn.Module):
    """``y = x @ W.T (+ b)`` with W and x in float8_e4m3fn, rowwise scales, bf16/fp32 output."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = rowwise_scale(w, FP8_MAX)
        # _scaled_mm wants its second operand column-major: keep W [out, in] and pass W.T.
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        copy_bias(self, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rowwise_scale(rows, FP8_MAX)
        x8 = (rows.float() / scale).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                             bias=self.bias, out_dtype=x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_decoder_fp8(decoder_layers: torch.nn.ModuleList) -> int:
    """Replace every ``nn.Linear`` in ``decoder_layers`` in place; returns how many."""
    return replace_linears(decoder_layers, Float8RowwiseLinear)
