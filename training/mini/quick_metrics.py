"""Quick validation metrics for model selection (not the official scorer).

Division: arg-max of the first-digit distribution restricted to digits 1-9.  Major group:
arg-max over valid major groups of ``P(d1) * P(d2 | d1)``, each step renormalised over the
digits the OIICS trie allows.  Macro-F1 at division level.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from soi_batch.taxonomy import load_taxonomy
from training.mini.data import ClsExample, pad
from training.mini.tokenizer import digit_ids


def _valid_major_groups() -> list[str]:
    return sorted({label[:2] for label in load_taxonomy().labels})


@torch.no_grad()
def digit_logprobs(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, prompts: list[list[int]], device: str, batch_size: int = 256
) -> np.ndarray:
    """``[n, 10]`` log-softmax over the digit tokens at the position after each prompt."""
    digits = torch.tensor(digit_ids(tok), device=device)
    out = []
    model.eval()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        ids, mask = pad(chunk, tok.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1
        hl = h[torch.arange(len(chunk), device=device), last].float()
        logits = model.lm_head(hl)[:, digits].float()
        out.append(torch.log_softmax(logits, -1).cpu().numpy())
    return np.concatenate(out)


def quick_eval(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, examples: list[ClsExample], device: str
) -> dict[str, float]:
    prompts = [e.ids[: e.answer_start] for e in examples]
    digits = digit_ids(tok)
    y_div = np.array([e.code[0] for e in examples])
    y_maj = np.array([e.code[:2] for e in examples])
    lp1 = digit_logprobs(model, tok, prompts, device)[:, 1:]  # digits 1..9
    lp1 = lp1 - np.logaddexp.reduce(lp1, axis=1, keepdims=True)
    pred_div = np.array([str(d + 1) for d in lp1.argmax(1)])
    majors = _valid_major_groups()
    score = np.full((len(examples), len(majors)), -np.inf)
    for d1 in range(1, 10):
        allowed = [int(m[1]) for m in majors if m[0] == str(d1)]
        if not allowed:
            continue
        lp2 = digit_logprobs(model, tok, [p + [digits[d1]] for p in prompts], device)[:, allowed]
        lp2 = lp2 - np.logaddexp.reduce(lp2, axis=1, keepdims=True)
        for j, d2 in enumerate(allowed):
            score[:, majors.index(f"{d1}{d2}")] = lp1[:, d1 - 1] + lp2[:, j]
    pred_maj = np.array(majors)[score.argmax(1)]
    true_lp = lp1[np.arange(len(examples)), y_div.astype(int) - 1]
    return {
        "division_acc": float(np.mean(pred_div == y_div)),
        "major_group_acc": float(np.mean(pred_maj == y_maj)),
        "division_macro_f1": float(f1_score(y_div, pred_div, average="macro")),
        "division_nll": float(-true_lp.mean()),
    }
