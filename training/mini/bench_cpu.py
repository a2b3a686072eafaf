"""CPU forward throughput of candidate soi-mini shapes (random weights; speed only).

Batch of 64 sequences of 60 tokens (~50 narrative tokens after a shared prefix, plus the
suffix), attending to a shared prefix KV cache, last-position logits only, then one extra
step of 16 label positions per report.  ``python -m training.mini.bench_cpu``
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache, MistralConfig, MistralForCausalLM

from training.mini.config import ModelShape


def bench(shape: ModelShape, *, batch: int = 64, seq: int = 60, prefix: int = 30, reps: int = 5) -> dict[str, float]:
    cfg = MistralConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size, tie_word_embeddings=True, sliding_window=None,
    )
    model = MistralForCausalLM(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_emb = model.model.embed_tokens.weight.numel()
    ids = torch.randint(10, shape.vocab_size, (batch, seq))
    pre = torch.randint(10, shape.vocab_size, (1, prefix))
    with torch.inference_mode():
        out = model(pre, use_cache=True)
        pkv = out.past_key_values
        def one() -> None:
            cache = DynamicCache()
            for layer, (k, v) in enumerate(zip(pkv.layers, pkv.layers)):
                cache.update(k.keys.expand(batch, -1, -1, -1), v.values.expand(batch, -1, -1, -1), layer)
            attn = torch.ones(batch, prefix + seq, dtype=torch.long)
            h = model.model(ids, past_key_values=cache, attention_mask=attn, use_cache=True).last_hidden_state
            model.lm_head(h[:, -1])
        one()
        t = time.perf_counter()
        for _ in range(reps):
            one()
        dt = (time.perf_counter() - t) / reps
    return {"params_M": n_params / 1e6, "non_emb_M": (n_params - n_emb) / 1e6, "s_per_batch": dt, "reports_per_s": batch / dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = {
        "h256-L2-i768": ModelShape(num_hidden_layers=2),
        "h256-L3-i640": ModelShape(num_hidden_layers=3, intermediate_size=640),
        "h256-L4-i768": ModelShape(),
        "h256-L6-i768": ModelShape(num_hidden_layers=6),
    }
    for name, shape in shapes.items():
        r = bench(shape)
        print(f"{name:16s} params {r['params_M']:.2f}M non-emb {r['non_emb_M']:.2f}M  "
              f"{r['s_per_batch']*1000:.0f} ms/64  {r['reports_per_s']:.0f} reports/s", flush=True)


if __name__ == "__main__":
    main()
