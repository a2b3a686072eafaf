"""vLLM engine (GPU): label-token scores from one-token requests with prefix caching.

How it maps the engine interface onto vLLM 0.26:

* Every score row is one request ``prompt + prefix`` run with ``max_tokens=1`` and
  ``SamplingParams.logprob_token_ids`` = the 11 label tokens, so vLLM returns the raw
  log-probabilities (full-vocabulary log-softmax) of exactly those tokens at the next
  position; no top-k, no vocabulary-sized output crosses into Python.
* ``enable_prefix_caching`` makes the shared template and each report's prompt reusable
  by its branch requests (in full KV blocks of ``block_size`` tokens: the prompt's last,
  partial block is recomputed by each branch).
* ``prefetch_slots``: the label digits whose one-token branches are sent together with the
  prompts in ``prefill`` (default: the label trie's divisions, the first digits a label may
  start with, which the scorer always expands).  One scheduling pass then runs a report's
  prompt and its division branches in the same steps, and ``extend`` answers those branches
  from memory.

vLLM is imported only in the constructor: CPU installs never need it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from soi_batch.bundle import ModelBundle
from soi_batch.engines.base import Engine, EngineInputs
from soi_batch.errors import BundleError, ConfigError, EngineCallError
from soi_batch.taxonomy import LABEL_DIGITS, N_LABEL_TOKENS

log = logging.getLogger(__name__)


_LOAD_FORMATS = ("auto", "safetensors", "dummy")

@dataclass(frozen=True)
class VLLMEngineConfig:
    quantization: Literal["fp8"] | None = None
    """None: the bundle's weights as they are (bf16); "fp8": vLLM's dynamic FP8 (W8A8)."""
    dtype: str = "bfloat16"
    max_num_batched_tokens: int = 16384
    max_num_seqs: int = 1024
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    enforce_eager: bool = True
    """True skips torch.compile and CUDA graphs: ~1 minute faster start, ~1 % slower prefill."""
    max_model_len: int = 2048
    block_size: int | None = None
    """KV block size (None: vLLM's default, 16 on Hopper with FlashAttention)."""
    tensor_parallel_size: int = 1
    load_format: str = "auto"
    """"auto" or "safetensors": the bundle's safetensors (vLLM is never asked to fall back to pickle
    files); "dummy" gives random weights of the bundle's shape (benchmarks only)."""
    seed: int = 0
    prefetch_slots: tuple[int, ...] | None = None
    """Label slots (digits) scored together with each prompt in ``prefill``; () disables.
    None: the digits a label may start with (:func:`prefetch_digits`)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments for ``vllm.LLM`` (e.g. ``attention_backend``)."""

    def __post_init__(self) -> None:
        if self.quantization not in (None, "fp8"):
            raise ConfigError(f"quantization must be None or 'fp8', got {self.quantization!r}")
        if self.load_format not in _LOAD_FORMATS:
            raise ConfigError(f"load_format must be one of {list(_LOAD_FORMATS)}, got {self.load_format!r}: "
                              "bundles hold safetensors weights only")
        if self.prefetch_slots is not None and any(not 0 <= s < len(LABEL_DIGITS) for s in self.prefetch_slots):
            raise ConfigError(f"prefetch_slots are digit slots 0..{len(LABEL_DIGITS) - 1}, got {self.prefetch_slots!r}")


def prefetch_digits(config: VLLMEngineConfig, first_level_digits: Sequence[int]) -> tuple[int, ...]:
    """The digits whose branches ``prefill`` sends with each prompt: ``config.prefetch_slots``, or
    (None) ``first_level_digits``, the label trie's divisions, which the scorer always expands."""
    if config.prefetch_slots is not None:
        return tuple(config.prefetch_slots)
    return tuple(int(d) for d in first_level_digits)


@dataclass
class _Handle:
    prompts: list[list[int]]
    known: dict[tuple[int, tuple[int, ...]], np.ndarray]
    """(row, label prefix) → scores already computed (prefetched branches)."""


class VLLMEngine(Engine):
    options_type: ClassVar[type[VLLMEngineConfig]] = VLLMEngineConfig
    supports_concurrent_batches: ClassVar[bool] = False  # vLLM schedules its own batches

    @classmethod
    def build(cls, inputs: EngineInputs, options: VLLMEngineConfig) -> VLLMEngine:
        return cls(inputs.bundle, inputs.label_token_ids, options, first_level_digits=inputs.first_digits)

    def __init__(self, bundle: ModelBundle | str, label_token_ids: Sequence[int],
                 config: VLLMEngineConfig = VLLMEngineConfig(), *,
                 first_level_digits: Sequence[int] = range(len(LABEL_DIGITS))) -> None:
        """``first_level_digits``: the digits a label may start with (the trie's divisions); their
        branches are prefetched unless ``config.prefetch_slots`` names others."""
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ConfigError(
                f"the vLLM engine needs vLLM ({exc}); install it with `pip install soi-batch[gpu]` "
                "on a machine with an NVIDIA GPU, or use engine='hf'"
            ) from exc
        self.config = config
        self.label_token_ids = tuple(int(t) for t in label_token_ids)
        if len(self.label_token_ids) != N_LABEL_TOKENS:
            raise EngineCallError(f"need {N_LABEL_TOKENS} label token ids (digits 0-9 then EOS), got {len(self.label_token_ids)}")
        path = str(bundle.path if isinstance(bundle, ModelBundle) else bundle)
        kwargs: dict[str, Any] = {
            "model": path, "dtype": config.dtype, "quantization": config.quantization, "skip_tokenizer_init": True,
            "enable_prefix_caching": config.enable_prefix_caching, "max_model_len": config.max_model_len,
            "max_num_batched_tokens": config.max_num_batched_tokens, "max_num_seqs": config.max_num_seqs,
            "gpu_memory_utilization": config.gpu_memory_utilization, "enforce_eager": config.enforce_eager,
            "tensor_parallel_size": config.tensor_parallel_size,
            "load_format": "safetensors" if config.load_format == "auto" else config.load_format,
            "seed": config.seed,
        }
        if config.block_size is not None:
            kwargs["block_size"] = config.block_size
        kwargs.update(config.extra)
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: vLLM cannot load this model: {exc}") from exc
        self._params = SamplingParams(
            max_tokens=1, temperature=0.0, detokenize=False, logprob_token_ids=list(self.label_token_ids),
        )
        self._slot_of = {t: i for i, t in enumerate(self.label_token_ids)}
        self._prefetch = [(self.label_token_ids[d],) for d in prefetch_digits(config, first_level_digits)]
        log.info("vLLM engine: %s (%s, quantization=%s, prefix caching=%s)", path, config.dtype,
                 config.quantization, config.enable_prefix_caching)

    @property
    def max_prompt_tokens(self) -> int:
        return self.config.max_model_len - 8

    @property
    def device_type(self) -> str:
        return "cuda"

    def _run(self, sequences: list[list[int]]) -> np.ndarray:
        """Label-token logprobs ``[len(sequences), 11]`` at the position after each sequence."""
        outs = self.llm.generate([{"prompt_token_ids": s} for s in sequences], self._params, use_tqdm=False)
        scores = np.full((len(sequences), N_LABEL_TOKENS), -np.inf, dtype=np.float32)
        slot_of = self._slot_of
        for i, out in enumerate(outs):
            for tid, lp in out.outputs[0].logprobs[0].items():
                slot = slot_of.get(tid)
                if slot is not None:
                    scores[i, slot] = lp.logprob
        return scores

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[_Handle, np.ndarray]:
        handle = _Handle([list(p) for p in prompts], {})
        k = 1 + len(self._prefetch)
        seqs: list[list[int]] = []
        for p in handle.prompts:  # a report's prompt, then its branches: they share KV blocks in one step
            seqs.append(p)
            seqs.extend(p + list(b) for b in self._prefetch)
        scores = self._run(seqs).reshape(len(prompts), k, N_LABEL_TOKENS)
        for row in range(len(prompts)):
            for j, b in enumerate(self._prefetch, start=1):
                handle.known[(row, b)] = scores[row, j]
        return handle, scores[:, 0].copy()

    def extend(self, handle: _Handle, rows: np.ndarray, prefixes: Sequence[Sequence[int]]) -> np.ndarray:
        if len(rows) == 0:
            raise EngineCallError("extend() needs at least one branch")
        out = np.empty((len(rows), N_LABEL_TOKENS), dtype=np.float32)
        todo: list[int] = []
        for i, (row, prefix) in enumerate(zip(np.asarray(rows).tolist(), prefixes)):
            hit = handle.known.get((row, tuple(prefix)))
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        if todo:
            seqs = [handle.prompts[int(rows[i])] + list(prefixes[i]) for i in todo]
            out[todo] = self._run(seqs)
        return out

    def release(self, handle: _Handle) -> None:
        handle.known.clear()
        handle.prompts = []
