"""Hugging Face transformers engine (CPU or GPU).

* The template text every prompt shares is run once; its KV cache is broadcast to each batch.
* Each batch runs only the report-specific tail, left-padded *after* the shared prefix.
* Label branches are appended to the same KV cache with a tree attention mask: a branch
  token attends to its report's prompt and its own ancestors only, so the 9 division
  digits (or a beam of deeper codes) are scored in one forward pass with no cache copies.
* Only the eleven label rows of the LM head are applied, at the positions that are needed.
* On a CPU, attention runs grouped-query heads straight through SDPA (``enable_gqa``) instead of
  copying each KV head once per query head (transformers does that whenever a mask is given).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from soi_batch.bundle import ModelBundle
from soi_batch.engines.base import Engine, EngineInputs
from soi_batch.engines.threads import set_torch_threads
from soi_batch.errors import BundleError, ConfigError, EngineCallError
from soi_batch.taxonomy import LABEL_DIGITS, N_LABEL_TOKENS

log = logging.getLogger(__name__)
_CPU_ATTENTION = "soi_sdpa_gqa"
"""attn_implementation of the engine on CPU: :func:`_sdpa_gqa_attention`."""


def _sdpa_gqa_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' SDPA attention, but with ``enable_gqa`` also when a mask is given: no
    ``repeat_kv`` copies of K and V (same numbers; the CPU flash kernel reads the KV head of each
    query head in place).  Not used on GPUs, where a masked GQA call would leave the fast kernels."""
    import torch

    causal = bool(query.shape[2] > 1 and attention_mask is None and
                  (is_causal if is_causal is not None else getattr(module, "is_causal", True)))
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def _register_cpu_attention() -> str:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(_CPU_ATTENTION, _sdpa_gqa_attention)
    AttentionMaskInterface.register(_CPU_ATTENTION, sdpa_mask)
    return _CPU_ATTENTION


@dataclass(frozen=True)
class HFEngineConfig:
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1" ..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """"auto": bfloat16 on GPU, float32 on CPU."""
    num_threads: int | None = None
    """torch intra-op threads on CPU (None: torch's default, or what the Ray actor or Spark task
    set).  Process-wide: :meth:`HFEngine.build` sets them for the whole process
    (:func:`~soi_batch.engines.threads.set_torch_threads`) when the engine runs on the CPU."""
    quantization: Literal["fp8", "int8"] | None = None
    """"fp8": linear layers of the decoder blocks in FP8 with rowwise scales (dynamic W8A8,
    ``soi_batch.engines.fp8``); for GPUs with FP8 tensor cores (compute capability ≥ 8.9).
    "int8": the same layers in int8 with rowwise scales (dynamic W8A8, ``soi_batch.engines.int8``);
    CPU only (int8 × int8 → int32 products, AVX512-VNNI / AMX).  Both change the scores a
    little: opt-in (agreement with fp32 for soi-small: bench/RESULTS.md, "soi-small on CPU")."""
    compile: bool = False
    """``torch.compile`` the decoder (dynamic shapes): fuses the norms, rotary and MLP
    element-wise work; the first batches pay the compile time (about 1-2 minutes), so use it
    for large jobs."""

    def __post_init__(self) -> None:
        if self.quantization not in (None, "fp8", "int8"):
            raise ConfigError(f"quantization must be None or 'fp8' (GPU) or 'int8' (CPU), got {self.quantization!r}")
        if self.quantization == "int8" and self.device not in ("auto", "cpu"):
            raise ConfigError(f"quantization='int8' runs on the CPU only, device is {self.device!r}: "
                              "on a GPU use quantization='fp8' (or none), or set device='cpu'")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be ≥ 1 or None, got {self.num_threads}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")
        if self.device != "auto":
            self.check_device(self.device)

    def check_device(self, device: str) -> None:
        """Refuse settings that make no sense on ``device`` (the resolved one: "cpu", "cuda", "cuda:1" ..).

        fp8 on the CPU has no FP8 hardware: torch emulates it, much slower than float32, and the
        scores change; int8 is the CPU's quantization.
        """
        if self.quantization == "fp8" and device == "cpu":
            raise ConfigError("quantization='fp8' needs a GPU with FP8 tensor cores, and the engine runs on the CPU "
                              f"(device {self.device!r}): there fp8 is emulated, slower than float32 and it changes "
                              "the scores. Leave quantization unset (or use quantization='int8' on the CPU), "
                              "or run on a GPU")


@dataclass
class _Batch:
    cache: Any
    valid: Any
    """[n, prompt_len] bool: which prompt KV slots hold real tokens (False: padding)."""
    last_pos: Any
    """[n] position id of each prompt's last token."""
    kv_len: int
    """KV slots in the cache: the prompt's, then label branch tokens appended by extend()."""
    first_scores: np.ndarray | None = None
    """[n, k, 11] scores after each first-level branch token, computed in the prefill pass."""
    slots: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict)
    """(row, label prefix) → KV slot of that prefix's last token."""


def resolve_device(device: str) -> str:
    """``device`` with "auto" replaced: "cuda" when torch sees a GPU, else "cpu"."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class HFEngine(Engine):
    options_type: ClassVar[type[HFEngineConfig]] = HFEngineConfig
    supports_concurrent_batches: ClassVar[bool] = True

    @classmethod
    def build(cls, inputs: EngineInputs, options: HFEngineConfig) -> HFEngine:
        """The engine for ``inputs``; sets torch's threads first when ``options.num_threads`` asks (CPU)."""
        device = resolve_device(options.device)
        options.check_device(device)  # "auto" resolved: before any weights are read
        if options.num_threads is not None and device == "cpu":
            set_torch_threads(options.num_threads)
        return cls(inputs.bundle, inputs.shared_prefix_ids, inputs.label_token_ids, options,
                   first_level_digits=inputs.first_digits)

    @classmethod
    def default_concurrent_batches(cls, device_type: str) -> int:
        """2 on a GPU (it runs one batch while the CPU prepares and decodes the other), else 1."""
        return 2 if device_type == "cuda" else 1

    def __init__(self, bundle: ModelBundle, shared_prefix_ids: Sequence[int], label_token_ids: Sequence[int],
                 config: HFEngineConfig = HFEngineConfig(), *,
                 first_level_digits: Sequence[int] = range(len(LABEL_DIGITS))) -> None:
        """``first_level_digits``: the digits a code may start with; their branches are scored
        in the same forward pass as the prompt (the trie's root children: 1-9 for OIICS)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self._torch = torch
        device = resolve_device(config.device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {config.device!r} asked for but torch sees no CUDA GPU; use device='cpu'")
        if config.quantization == "int8" and device != "cpu":
            raise ConfigError(f"quantization='int8' runs on the CPU only, and the engine resolved device "
                              f"{config.device!r} to {device!r}: use quantization='fp8' on a GPU (or none), "
                              "or set device='cpu'")
        dtype_name = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype_name)
        try:
            model_config = AutoConfig.from_pretrained(str(bundle.path), trust_remote_code=False)
            model, loading = AutoModelForCausalLM.from_pretrained(
                str(bundle.path),
                config=model_config,
                dtype=self.dtype,
                use_safetensors=True,
                trust_remote_code=False,
                attn_implementation=_register_cpu_attention() if device == "cpu" else "sdpa",
                output_loading_info=True,
            )
        except (OSError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: cannot load the model weights: {exc}") from exc
        gaps = {k: sorted(v)[:3] for k, v in loading.items() if k in ("missing_keys", "unexpected_keys",
                                                                       "mismatched_keys") and v}
        if gaps:  # load_bundle checks this from the headers first; a bundle built in code could skip it
            raise BundleError(f"{bundle.path}: the weights do not match config.json ({gaps}); copy the bundle again")
        self.model = model.to(self.device).eval()
        if config.quantization == "fp8":
            if self.device.type == "cuda" and torch.cuda.get_device_capability(self.device) < (8, 9):
                raise ConfigError(f"quantization='fp8' needs FP8 tensor cores (compute capability ≥ 8.9); "
                                  f"{torch.cuda.get_device_name(self.device)} has none: leave quantization unset")
            from soi_batch.engines.fp8 import quantize_decoder_fp8

            n_fp8 = quantize_decoder_fp8(self.model.base_model.layers)
            log.info("HF engine: %d linear layers in FP8 (rowwise dynamic scales)", n_fp8)
        elif config.quantization == "int8":
            from soi_batch.engines.int8 import quantize_decoder_int8

            n_int8 = quantize_decoder_int8(self.model.base_model.layers)
            log.info("HF engine: %d linear layers in int8 (rowwise dynamic scales)", n_int8)
        self.label_token_ids = tuple(int(t) for t in label_token_ids)
        head = self.model.get_output_embeddings().weight
        self._label_head = head[list(self.label_token_ids)].detach().clone()
        bias = getattr(self.model.get_output_embeddings(), "bias", None)
        self._label_bias = None if bias is None else bias[list(self.label_token_ids)].detach().clone()
        self._decoder = self.model.base_model
        self._max_positions = int(getattr(model_config, "max_position_embeddings", 2048))
        self._first_tokens = [self.label_token_ids[d] for d in first_level_digits]
        self._first_index = {(tok,): j for j, tok in enumerate(self._first_tokens)}
        self._prefix_ids = list(shared_prefix_ids)
        self._prefix_kv = self._run_prefix()
        if config.compile:
            self._decoder = torch.compile(self._decoder, dynamic=True)
        log.info("HF engine: %s on %s (%s%s%s), shared prefix %d tokens", type(self.model).__name__, self.device,
                 dtype_name, f", {config.quantization}" if config.quantization else "", ", torch.compile" if config.compile else "",
                 len(self._prefix_ids))

    @property
    def max_prompt_tokens(self) -> int:
        return self._max_positions - 8

    @property
    def device_type(self) -> str:
        return self.device.type

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _run_prefix(self) -> list[tuple[Any, Any]]:
        torch = self._torch
        cache = self._new_cache()
        ids = torch.tensor([self._prefix_ids], device=self.device)
        with torch.inference_mode():
            self._decoder(input_ids=ids, past_key_values=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _label_scores(self, hidden: Any) -> np.ndarray:
        out = hidden.to(self._label_head.dtype) @ self._label_head.T
        if self._label_bias is not None:
            out = out + self._label_bias
        return out.float().cpu().numpy()

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[_Batch, np.ndarray]:
        torch = self._torch
        p = len(self._prefix_ids)
        if any(list(ids[:p]) != self._prefix_ids for ids in prompts):
            raise EngineCallError("every prompt must start with the shared template prefix")
        n = len(prompts)
        tails = [list(ids[p:]) for ids in prompts]
        width = max(len(t) for t in tails)
        tail_ids = torch.zeros((n, width), dtype=torch.long)
        tail_valid = torch.zeros((n, width), dtype=torch.bool)
        for i, t in enumerate(tails):
            tail_ids[i, width - len(t):] = torch.tensor(t)
            tail_valid[i, width - len(t):] = True
        valid = torch.cat([torch.ones((n, p), dtype=torch.bool), tail_valid], dim=1).to(self.device)
        tail_valid = tail_valid.to(self.device)
        positions = p + tail_valid.long().cumsum(dim=1) - 1
        # The first label level rides along: k branch tokens after the tail, each attending to
        # its report's prompt and itself, at the position right after the prompt.
        k = len(self._first_tokens)
        ids = torch.cat([tail_ids, torch.tensor([self._first_tokens] * n, dtype=torch.long).reshape(n, k)], 1)
        positions = torch.cat([positions, positions[:, -1:].expand(n, k) + 1], 1)
        mask = torch.zeros((n, width + k, p + width + k), dtype=torch.bool, device=self.device)
        causal = torch.ones((width, p + width), dtype=torch.bool, device=self.device).tril(diagonal=p)
        mask[:, :width, : p + width] = valid[:, None, :] & causal[None]
        mask[:, width:, : p + width] = valid[:, None, :]
        mask[:, torch.arange(width, width + k), p + width + torch.arange(k)] = True
        cache = self._new_cache()
        for layer, (kk, vv) in enumerate(self._prefix_kv):
            cache.update(kk.expand(n, -1, -1, -1), vv.expand(n, -1, -1, -1), layer)
        with torch.inference_mode():
            hidden = self._decoder(
                input_ids=ids.to(self.device), attention_mask=mask.unsqueeze(1),
                position_ids=positions.clamp(min=0).to(self.device), past_key_values=cache, use_cache=True,
            ).last_hidden_state[:, width - 1 :]
        scores = self._label_scores(hidden)
        batch = _Batch(cache=cache, valid=valid, last_pos=positions[:, width - 1], kv_len=p + width + k,
                       first_scores=scores[:, 1:])
        for row in range(n):
            for j, tok in enumerate(self._first_tokens):
                batch.slots[(row, (tok,))] = p + width + j
        return batch, scores[:, 0]

    def extend(self, handle: _Batch, rows: np.ndarray, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        """Append each branch's missing prefix tokens to its report's sequence and score them."""
        torch = self._torch
        if len(rows) == 0:
            raise EngineCallError("extend() needs at least one branch")
        first = [self._first_index.get(tuple(prefix)) for prefix in prefixes]
        if all(j is not None for j in first):  # scored in the prefill pass already
            return handle.first_scores[np.asarray(rows), np.asarray(first)]
        n, s_old = handle.valid.shape[0], handle.kv_len
        new_tokens: dict[int, list[tuple[int, ...]]] = {}
        for row, prefix in zip(rows.tolist(), prefixes):
            need = new_tokens.setdefault(row, [])
            for end in range(1, len(prefix) + 1):
                key = tuple(prefix[:end])
                if (row, key) not in handle.slots and key not in need:
                    need.append(key)
        width = max(len(v) for v in new_tokens.values())
        if width == 0:
            raise EngineCallError("extend() was asked only for prefixes scored earlier; ask each prefix once")
        ids = np.zeros((n, width), dtype=np.int64)
        pos = np.repeat(handle.last_pos.cpu().numpy()[:, None], width, axis=1)
        m_rows, m_cols, m_slots = [], [], []
        for row, keys in new_tokens.items():
            for j, key in enumerate(keys):
                handle.slots[(row, key)] = s_old + j
                ids[row, j] = key[-1]
                pos[row, j] += len(key)
                for end in range(1, len(key)):
                    m_rows.append(row)
                    m_cols.append(j)
                    m_slots.append(handle.slots[(row, key[:end])])
        mask = torch.zeros((n, width, s_old + width), dtype=torch.bool, device=self.device)
        mask[:, :, : handle.valid.shape[1]] = handle.valid[:, None, :]
        mask[:, torch.arange(width), s_old + torch.arange(width)] = True
        if m_rows:
            mask[torch.tensor(m_rows), torch.tensor(m_cols), torch.tensor(m_slots)] = True
        with torch.inference_mode():
            hidden = self._decoder(
                input_ids=torch.from_numpy(ids).to(self.device), attention_mask=mask.unsqueeze(1),
                position_ids=torch.from_numpy(pos).to(self.device), past_key_values=handle.cache, use_cache=True,
            ).last_hidden_state
        handle.kv_len += width
        cols = [handle.slots[(row, tuple(prefix))] - s_old for row, prefix in zip(rows.tolist(), prefixes)]
        fresh = np.array([c >= 0 for c in cols])
        if not all(fresh[i] or first[i] is not None for i in range(len(cols))):
            raise EngineCallError("extend() was asked for a prefix scored earlier; ask each prefix once")
        out = np.empty((len(cols), N_LABEL_TOKENS), dtype=np.float32)
        idx = np.flatnonzero(fresh)
        picked = hidden[torch.from_numpy(np.asarray(rows)[idx]).to(self.device),
                        torch.tensor([cols[i] for i in idx], device=self.device)]
        out[idx] = self._label_scores(picked)
        memo = np.flatnonzero(~fresh)
        if memo.size:
            out[memo] = handle.first_scores[np.asarray(rows)[memo], [first[i] for i in memo]]
        return out

    def release(self, handle: _Batch) -> None:
        handle.cache = None
        handle.slots.clear()
