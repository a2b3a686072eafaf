"""Hyper-parameters of soi-mini: architecture, tokenizer and the two training stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

TRAIN_ON = ("train", "train+validation")


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 768
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    dropout: float = 0.1
    """Attention dropout (Mistral has no residual dropout); token dropout is in ``TrainConfig``."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    shape: ModelShape = field(default_factory=ModelShape)
    lowercase: bool = True
    # stage 1: language modelling on train narratives (+ OIICS titles)
    lm_epochs: int = 20
    lm_lr: float = 1e-3
    lm_batch_size: int = 64
    # stage 2: prompt -> code
    cls_epochs: int = 20
    cls_lr: float = 5e-4
    cls_batch_size: int = 32
    lm_weight: float = 0.1
    """Weight of the LM loss on the narrative tokens during stage 2."""
    label_smoothing: float = 0.1
    token_dropout: float = 0.1
    """Probability of replacing a narrative token by ``<unk>`` in stage 2 (augmentation)."""
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    ema_decay: float = 0.999
    """EMA of the weights during stage 2 (0 disables); the EMA weights are evaluated and shipped."""
    max_rows: int | None = None
    """Use only the first N train / validation rows (tests)."""
    max_narrative_tokens: int = 160
    train_on: str = "train"
    """Rows both stages (and the tokenizer) are trained on: ``"train"`` (2015-01..2016-06; validation
    held out) or ``"train+validation"`` (2015-01..2016-08; the per-epoch validation eval is then
    not held out). Test is never used."""

    def __post_init__(self) -> None:
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}; got {self.train_on!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **kw: Any) -> TrainConfig:
        """Replace fields; keys of :class:`ModelShape` are applied to ``shape``."""
        shape_keys = {f.name for f in fields(ModelShape)}
        shape_kw = {k: v for k, v in kw.items() if k in shape_keys}
        rest = {k: v for k, v in kw.items() if k not in shape_keys}
        return replace(self, shape=replace(self.shape, **shape_kw), **rest)


TINY = TrainConfig().with_overrides(
    vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    intermediate_size=64, lm_epochs=1, cls_epochs=1, max_rows=200, ema_decay=0.0,
)
"""A config that trains in seconds on CPU (tests)."""
