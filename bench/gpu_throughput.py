"""GPU throughput of report classification: naive generate vs vLLM vs our engines (issue 10).

Prompts are the real alpaca prompts of the bundled OSHA SIR narratives, tokenised with the
Mistral-7B v0.1 sentencepiece tokenizer (``bench/osha_mistral_v1_prompts.npz``, built from
``soi_batch.datasets.osha.read_osha_sir()``; resampled with replacement to ``--n`` reports).  The model
has the Mistral-7B shape with random weights (vLLM ``load_format="dummy"``; transformers
random init in bf16), so the numbers are speed, not accuracy.

Each part runs in its own process (vLLM's engine core and transformers do not share the GPU
well); ``--parts`` picks a subset, ``--table`` merges the JSON files into one table.

    python bench/gpu_throughput.py --parts roofline,naive,hf_mg --out DIR
    python bench/gpu_throughput.py --parts vllm_gen,peer,ours_mg,ours_full --out DIR
    python bench/gpu_throughput.py --parts ours_mg --quant fp8 --out DIR
    python bench/gpu_throughput.py --table DIR

Parts: roofline (8192³ bf16 matmul), naive (transformers generate, 16 new tokens, batches of
128, parse the text), vllm_gen (vLLM generate, defaults, 16 tokens), peer (vLLM generate
max_tokens=1, logprobs=10, prefix caching), hf_mg (our transformers engine through the
scorer: division + major group), hf_mg_compile (the same with ``compile=True``),
hf_profile (torch.profiler over two batches of hf_mg), ours_mg (our vLLM engine, division +
major group), ours_full (our vLLM engine, the whole trie with beam 3).  ``--quant fp8``
applies to the vLLM parts and to the hf parts (FP8 rowwise linear layers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
DATA = HERE / "osha_mistral_v1_prompts.npz"
MODEL_DIR = Path(os.environ.get("BENCH_MODEL_DIR", "/root/mistral-7b-shape"))
PARAMS = 7.24e9
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0, "sliding_window": None, "hidden_act": "silu", "tie_word_embeddings": False,
    "dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}
_CODE = re.compile(r"\d{1,4}")


SUFFIX_TOKENS = 6
"""Every prompt ends with the same 6 tokens ("\\n\\n### Response:\\n")."""


def load_prompts(n: int, seed: int = 0) -> tuple[list[list[int]], dict]:
    """``n`` prompts with the lengths of the real ones, resampled, and all distinct.

    A prompt drawn a second time gets its narrative tokens shuffled (same length, new
    content): with repeats, vLLM's prefix cache would skip whole repeated prompts, which
    no real nightly load gives (19,931 of the 19,947 OSHA prompts are distinct).
    """
    z = np.load(DATA)
    flat, off = z["flat"].astype(np.int64), z["offsets"]
    p = int(z["shared_prefix_len"])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(off) - 1, size=n)
    seen: set[int] = set()
    prompts = []
    for i in pick.tolist():
        ids = flat[off[i]: off[i + 1]].copy()
        if i in seen:
            rng.shuffle(ids[p: len(ids) - SUFFIX_TOKENS])
        seen.add(i)
        prompts.append(ids.tolist())
    meta = {"shared_prefix_len": p, "label_token_ids": z["label_token_ids"].tolist(), "pieces": z["pieces"],
            "distinct_prompts": len({tuple(q) for q in prompts})}
    return prompts, meta


def write_model_dir() -> Path:
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    (MODEL_DIR / "config.json").write_text(json.dumps(MISTRAL_7B))
    return MODEL_DIR


def parse_codes(texts: list[str]) -> list[str | None]:
    out = []
    for t in texts:
        m = _CODE.search(t)
        out.append(m.group(0) if m else None)
    return out


def decode(pieces: np.ndarray, ids: list[int]) -> str:
    return "".join(pieces[i] for i in ids if i > 2).replace("\u2581", " ")


def timed(fn):
    import torch

    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


# ---------------------------------------------------------------- parts
def part_roofline(args, prompts, meta) -> dict:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(30):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    med = float(np.median(times))
    return {"tflops_bf16_8192": 2 * 8192**3 / med / 1e12, "median_s": med}


def _hf_model():
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(**{k: v for k, v in MISTRAL_7B.items() if k not in ("architectures", "dtype")})
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = MistralForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    return model.eval()


def part_naive(args, prompts, meta) -> dict:
    import torch

    model = _hf_model()
    pieces = meta["pieces"]
    bs = 128

    def run(ps):
        codes = []
        for i in range(0, len(ps), bs):
            batch = ps[i: i + bs]
            w = max(len(p) for p in batch)
            ids = torch.zeros((len(batch), w), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, p in enumerate(batch):  # left padding
                ids[j, w - len(p):] = torch.tensor(p)
                mask[j, w - len(p):] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=16,
                                     min_new_tokens=16, do_sample=False, pad_token_id=0)
            codes += parse_codes([decode(pieces, o[w:].tolist()) for o in out.cpu()])
        return codes

    run(prompts[:bs])
    ps = prompts[: args.n_naive]
    _, dt = timed(lambda: run(ps))
    return {"reports": len(ps), "seconds": dt, "prompt_tokens": sum(map(len, ps)),
            "tokens_computed_per_report": sum(map(len, ps)) / len(ps) + 15, "new_tokens": 16}


def _trie(kind: str):
    from soi_batch.scorer import LabelTrie
    from soi_batch.taxonomy import load_taxonomy

    labels = load_taxonomy().labels
    if kind == "mg":  # division + major group: major groups are the labels
        labels = sorted({c[:2] for c in labels})
    return LabelTrie(labels)


def _score_all(scorer, prompts, chunk) -> tuple[list, float]:
    outs = []
    scorer.score(prompts[: min(len(prompts), 256)])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(prompts), chunk):
        outs.append(scorer.score(prompts[i: i + chunk]))
    return outs, time.perf_counter() - t


def _hf_engine(meta, prefix: list[int], *, compile: bool = False, quant: str | None = None):
    """Our transformers engine on a random Mistral-7B-shape bundle (saved once per machine)."""
    import torch

    from soi_batch.bundle import ModelBundle, new_manifest, write_manifest
    from soi_batch.engines.hf import HFEngine, HFEngineConfig
    from soi_batch.prompt import PromptTemplate

    bdir = Path("/root/bundle-7b-random")
    manifest = new_manifest(model_id="mistral-7b-random", model_version="0", prompt=PromptTemplate())
    if not any(bdir.glob("*.safetensors")):
        model = _hf_model()
        model.save_pretrained(bdir, safe_serialization=True)
        del model
        torch.cuda.empty_cache()
    write_manifest(bdir, manifest)
    return HFEngine(ModelBundle(bdir, manifest), prefix, meta["label_token_ids"],
                    HFEngineConfig(compile=compile, quantization=quant))


def _hf_run(args, prompts, meta, *, compile: bool) -> dict:
    from soi_batch.scorer import LabelScorer, ScorerConfig

    t = time.perf_counter()
    p = meta["shared_prefix_len"]
    engine = _hf_engine(meta, prompts[0][:p], compile=compile, quant=args.quant)
    load_s = time.perf_counter() - t
    ps = prompts[: args.n_hf]
    order = np.argsort([len(q) for q in ps], kind="stable")  # length-sorted batches: little padding
    ps = [ps[i] for i in order]
    full = args.hf_trie == "full"  # the whole trie, beam 3 (the classify default), or division + major group
    scorer = LabelScorer(engine, _trie(args.hf_trie), ScorerConfig(beam=3 if full else None))
    t = time.perf_counter()
    for i in range(0, min(len(ps), 4 * args.hf_batch), args.hf_batch):  # warm-up (and compile) on all widths
        scorer.score(ps[i: i + args.hf_batch])
    scorer.score(ps[-args.hf_batch:])
    warm_s = time.perf_counter() - t
    # As Classifier(concurrent_batches=N) does: N batches in flight from N threads, so the GPU
    # runs one batch while the CPU turns another into codes and prepares the next.
    chunks = [ps[i: i + args.hf_batch] for i in range(0, len(ps), args.hf_batch)]
    t = time.perf_counter()
    with ThreadPoolExecutor(args.hf_threads) as pool:
        list(pool.map(scorer.score, chunks))
    dt = time.perf_counter() - t
    return {"reports": len(ps), "seconds": dt, "prompt_tokens": sum(map(len, ps)), "load_s": load_s,
            "warmup_s": warm_s, "compile": compile, "quantization": args.quant, "threads": args.hf_threads,
            "dynamo_counters": _dynamo_counters() if compile else None,
            "trie": args.hf_trie, "batch": args.hf_batch,
            "tokens_computed_per_report": None if full else sum(map(len, ps)) / len(ps) - p + 9}


def _dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: {str(kk): vv for kk, vv in v.items()} for k, v in counters.items()
            if k in ("stats", "graph_break", "recompiles", "frames")}


def part_hf_mg(args, prompts, meta) -> dict:
    return _hf_run(args, prompts, meta, compile=False)


def part_hf_mg_compile(args, prompts, meta) -> dict:
    return _hf_run(args, prompts, meta, compile=True)


def part_hf_profile(args, prompts, meta) -> dict:
    """torch.profiler over 2 batches of the eager engine: where the GPU time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from soi_batch.scorer import LabelScorer, ScorerConfig

    engine = _hf_engine(meta, prompts[0][: meta["shared_prefix_len"]], quant=args.quant)
    ps = sorted(prompts[:4096], key=len)[2048: 2048 + 2 * args.hf_batch]
    scorer = LabelScorer(engine, _trie("mg"), ScorerConfig(beam=None))
    scorer.score(ps[: args.hf_batch])
    _, wall = timed(lambda: [scorer.score(ps[i: i + args.hf_batch]) for i in range(0, len(ps), args.hf_batch)])
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(0, len(ps), args.hf_batch):
            scorer.score(ps[i: i + args.hf_batch])
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60)
    (args.out / "hf_profile.txt").write_text(table)
    print(table, flush=True)
    events = prof.key_averages()
    total = sum(e.self_device_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:15]
    return {"batches": 2, "batch": args.hf_batch, "wall_s_unprofiled": wall, "gpu_self_us_total": total,
            "top_self_gpu": [{"name": e.key[:80], "self_us": e.self_device_time_total, "calls": e.count} for e in top]}


def _llm(args, **kw):
    from vllm import LLM

    base = dict(model=str(write_model_dir()), load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True,
                max_model_len=2048, gpu_memory_utilization=0.88, seed=0, enforce_eager=True)
    base.update(kw)
    if args.quant:
        base["quantization"] = args.quant
    return LLM(**base)


def part_vllm_gen(args, prompts, meta) -> dict:
    from vllm import SamplingParams

    llm = _llm(args)  # vLLM defaults otherwise (prefix caching on in v1, default batch sizes)
    pieces = meta["pieces"]
    sp = SamplingParams(max_tokens=16, min_tokens=16, temperature=0.0, detokenize=False)
    ps = prompts[: args.n]
    llm.generate([{"prompt_token_ids": p} for p in ps[:512]], sp, use_tqdm=False)
    t = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in ps], sp, use_tqdm=False)
    parse_codes([decode(pieces, list(o.outputs[0].token_ids)) for o in outs])
    dt = time.perf_counter() - t
    return {"reports": len(ps), "seconds": dt, "prompt_tokens": sum(map(len, ps)),
            "tokens_computed_per_report": sum(map(len, ps)) / len(ps) - meta["shared_prefix_len"] + 15}


def part_peer(args, prompts, meta) -> dict:
    from vllm import SamplingParams

    llm = _llm(args, enable_prefix_caching=True, max_num_batched_tokens=16384, max_num_seqs=512)
    sp = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, logprobs=10)
    ps = prompts[: args.n]
    llm.generate([{"prompt_token_ids": p} for p in ps[:512]], sp, use_tqdm=False)
    t = time.perf_counter()
    llm.generate([{"prompt_token_ids": p} for p in ps], sp, use_tqdm=False)
    dt = time.perf_counter() - t
    return {"reports": len(ps), "seconds": dt, "prompt_tokens": sum(map(len, ps)), "note": "first digit only",
            "tokens_computed_per_report": sum(map(len, ps)) / len(ps) - meta["shared_prefix_len"]}


def _ours(args, prompts, meta, trie_kind: str) -> dict:
    from soi_batch.engines.vllm_engine import VLLMEngine, VLLMEngineConfig
    from soi_batch.scorer import LabelScorer, ScorerConfig

    cfg = VLLMEngineConfig(quantization=args.quant, load_format="dummy", max_num_batched_tokens=args.mbt,
                           max_num_seqs=args.mns, gpu_memory_utilization=0.88, enforce_eager=True)
    trie = _trie(trie_kind)
    t = time.perf_counter()
    engine = VLLMEngine(str(write_model_dir()), meta["label_token_ids"], cfg, first_level_digits=trie.first_digits)
    init_s = time.perf_counter() - t
    scorer = LabelScorer(engine, trie, ScorerConfig(beam=3 if trie_kind == "full" else None))
    ps = prompts[: args.n]
    calls = {"prefill": 0, "extend": 0, "requests": 0}
    run, pre, ext = engine._run, engine.prefill, engine.extend

    def counting_run(seqs):
        calls["requests"] += len(seqs)
        return run(seqs)

    engine._run = counting_run
    outs, dt = _score_all(scorer, ps, args.chunk)
    engine._run, engine.prefill, engine.extend = run, pre, ext
    lens = np.array([len(p) for p in ps])
    return {"reports": len(ps), "seconds": dt, "prompt_tokens": int(lens.sum()), "init_s": init_s,
            "requests_per_report": calls["requests"] / (len(ps) + min(len(ps), 256)),
            "tokens_computed_per_report": float((lens - meta["shared_prefix_len"]).mean()
                                                + 9 * ((lens % 16) + 1).mean()),
            "mbt": args.mbt, "mns": args.mns, "chunk": args.chunk}


def part_ours_mg(args, prompts, meta) -> dict:
    return _ours(args, prompts, meta, "mg")


def part_ours_full(args, prompts, meta) -> dict:
    return _ours(args, prompts, meta, "full")


PARTS = {"roofline": part_roofline, "naive": part_naive, "hf_mg": part_hf_mg, "hf_mg_compile": part_hf_mg_compile,
         "hf_profile": part_hf_profile, "vllm_gen": part_vllm_gen,
         "peer": part_peer, "ours_mg": part_ours_mg, "ours_full": part_ours_full}


# ---------------------------------------------------------------- table
def table(folder: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    roof = next((r["result"]["tflops_bf16_8192"] for r in rows if r["part"] == "roofline"), None)
    naive = next((r["result"] for r in rows if r["part"] == "naive"), None)
    naive_rps = naive["reports"] / naive["seconds"] if naive else None
    lines = [f"matmul roofline (8192^3 bf16): {roof:.0f} TFLOP/s" if roof else "matmul roofline: not measured",
             "| part | quant | reports | reports/s | prompt tok/s | computed tok/report | % of matmul roofline | x naive |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["part"] == "roofline":
            continue
        res = r["result"]
        if "reports" not in res:
            continue
        r["part"] = r["part"] + (f" ({r['tag']})" if r.get("tag") else "")
        rps = res["reports"] / res["seconds"]
        tps = res["prompt_tokens"] / res["seconds"]
        comp = res.get("tokens_computed_per_report")
        frac = f"{100 * rps * comp * 2 * PARAMS / (roof * 1e12):.0f} %" if roof and comp else "-"
        speed = f"{rps / naive_rps:.1f}" if naive_rps else "-"
        lines.append(f"| {r['part']} | {r['quant'] or 'bf16'} | {res['reports']} | {rps:,.0f} | {tps:,.0f} | "
                     f"{comp:.0f} | {frac} | {speed} |" if comp else
                     f"| {r['part']} | {r['quant'] or 'bf16'} | {res['reports']} | {rps:,.0f} | {tps:,.0f} | - | - | {speed} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="roofline")
    ap.add_argument("--quant", default=None, choices=[None, "fp8"])
    ap.add_argument("--n", type=int, default=20000, help="reports for the vLLM parts")
    ap.add_argument("--n-naive", type=int, default=2048)
    ap.add_argument("--n-hf", type=int, default=8192)
    ap.add_argument("--hf-batch", type=int, default=256)
    ap.add_argument("--hf-threads", type=int, default=2, help="batches in flight (hf parts)")
    ap.add_argument("--hf-trie", choices=("mg", "full"), default="mg",
                    help="hf parts: division + major group (mg) or the whole trie with beam 3 (full)")
    ap.add_argument("--tag", default="", help="suffix of the result file name (variants of one part)")
    ap.add_argument("--chunk", type=int, default=20000, help="reports per scorer.score() call (vLLM)")
    ap.add_argument("--mbt", type=int, default=16384)
    ap.add_argument("--mns", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="small n everywhere (smoke run)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--table", type=Path, default=None, help="print the table of a results folder and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return 0
    if args.quick:
        args.n, args.n_naive, args.n_hf, args.chunk = 2000, 256, 1024, 2000
    prompts, meta = load_prompts(max(args.n, args.n_naive, args.n_hf))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.parts.split(","):
        t = time.perf_counter()
        res = PARTS[name](args, prompts, meta)
        import torch

        rec = {"part": name, "quant": args.quant, "result": res, "wall_s": time.perf_counter() - t,
               "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
               "date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick}
        try:
            import vllm

            rec["vllm"] = vllm.__version__
        except ImportError:
            pass
        rec["tag"] = args.tag
        stem = f"{name}{'-' + args.quant if args.quant else ''}{'-' + args.tag if args.tag else ''}"
        (args.out / f"{stem}.json").write_text(json.dumps(rec, indent=1))
        if "reports" in res:
            print(f"RESULT {stem} {args.quant or 'bf16'}: {res['reports'] / res['seconds']:,.0f} reports/s "
                  f"({res['reports']} in {res['seconds']:.1f} s) {json.dumps({k: v for k, v in res.items() if k not in ('reports', 'seconds')})}",
                  flush=True)
        else:
            print(f"RESULT {name}: {res}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
