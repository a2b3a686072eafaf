"""Reports → prompt token ids, and the token ids of the label alphabet (digits + EOS).

Every engine tokenises through this one class, so the prompt the model sees at inference is
exactly the one it was trained on (the template comes from the bundle).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from soi_batch.bundle import ModelBundle
from soi_batch.errors import BundleError, ConfigError, TokenizerError
from soi_batch.prompt import PromptTemplate, normalize_narrative
from soi_batch.taxonomy import LABEL_DIGITS

_PROBE = "A worker was struck by a forklift."


@dataclass(frozen=True)
class EncodedReport:
    ids: list[int] | None
    """Prompt token ids, or None when the report has no usable text."""
    truncated: bool = False
    error: str | None = None


class PromptEncoder:
    """Tokenises reports with the bundle's tokenizer and prompt template.

    On construction it checks the label contract: each digit after the prompt is one token,
    digits never merge with each other or with the prompt's last token, and the tokenizer
    has an EOS token.  A tokenizer that breaks it raises :class:`TokenizerError`.
    """

    def __init__(self, tokenizer: Any, template: PromptTemplate, *, max_prompt_tokens: int,
                 source: str = "tokenizer") -> None:
        """``source`` names where the tokenizer came from, in errors."""
        self.tokenizer = tokenizer
        self.source = source
        self.template = template
        self.max_prompt_tokens = max_prompt_tokens
        self.label_token_ids = self._label_token_ids()
        self.shared_prefix_ids: list[int] = self._ids(self.template.shared_prefix)
        probe = self._ids(self.template.render(_PROBE))
        head = self._ids(self.template.shared_prefix + _PROBE)
        if probe[: len(head)] != head:
            raise TokenizerError(
                f"{source}: the tokenizer merges the narrative's end with the prompt suffix; "
                "long narratives could not be truncated safely"
            )
        self.suffix_ids: list[int] = probe[len(head) :]
        template_tokens = len(self.shared_prefix_ids) + len(self.suffix_ids)
        if max_prompt_tokens <= template_tokens:
            raise ConfigError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for the narrative: the prompt "
                              f"template alone is {template_tokens} tokens with {source}; use more than that")

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, *, max_prompt_tokens: int) -> PromptEncoder:
        """The encoder of a bundle: its tokenizer and its prompt template."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(bundle.path), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: cannot load the tokenizer: {exc}") from exc
        return cls(tokenizer, bundle.prompt, max_prompt_tokens=max_prompt_tokens, source=str(bundle.path))

    @classmethod
    def check_tokenizer(cls, bundle: ModelBundle) -> None:
        """Load the bundle's tokenizer and check the label contract (for the driver, before workers
        load it); raises :class:`BundleError` or :class:`TokenizerError` naming the bundle."""
        cls.from_bundle(bundle, max_prompt_tokens=sys.maxsize)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def _label_token_ids(self) -> tuple[int, ...]:
        """Token ids of :data:`~soi_batch.taxonomy.LABEL_DIGITS` after the prompt, then of EOS."""
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise TokenizerError(f"{self.source}: the tokenizer has no EOS token (eos_token in "
                                 "tokenizer_config.json); labels end with EOS")
        prompt = self.template.render(_PROBE)
        base = self._ids(prompt)
        digit_ids = []
        for digit in LABEL_DIGITS:
            ids = self._ids(prompt + digit)
            if ids[:-1] != base or len(ids) != len(base) + 1:
                raise TokenizerError(
                    f"{self.source}: digit {digit!r} after the prompt is not exactly one new token; "
                    "soi-batch needs a tokenizer that splits digits (as Mistral/Llama do)"
                )
            digit_ids.append(ids[-1])
        for run in (LABEL_DIGITS, LABEL_DIGITS[::-1], "8621", "9999"):
            expected = base + [digit_ids[LABEL_DIGITS.index(d)] for d in run]
            if self._ids(prompt + run) != expected:
                raise TokenizerError(
                    f"{self.source}: the tokenizer merges the digits of {run!r}; soi-batch needs one token per digit"
                )
        return (*digit_ids, int(eos))

    def encode(self, texts: Sequence[object]) -> list[EncodedReport]:
        """One :class:`EncodedReport` per text; nulls and blank texts get ``error`` set."""
        out: list[EncodedReport | None] = [None] * len(texts)
        todo: list[tuple[int, str, bool]] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                out[i] = EncodedReport(None, error="text is null" if text is None else "text is not a string")
                continue
            narrative, truncated = normalize_narrative(text, self.template.max_input_chars)
            if not narrative:
                out[i] = EncodedReport(None, error="text is empty")
            else:
                todo.append((i, narrative, truncated))
        if todo:
            batch = self.tokenizer([self.template.render(n) for _, n, _ in todo]).input_ids
            for (i, _, truncated), ids in zip(todo, batch):
                ids = list(ids)
                if len(ids) > self.max_prompt_tokens:
                    ids = ids[: self.max_prompt_tokens - len(self.suffix_ids)] + self.suffix_ids
                    truncated = True
                out[i] = EncodedReport(ids, truncated=truncated)
        return out  # type: ignore[return-value]
