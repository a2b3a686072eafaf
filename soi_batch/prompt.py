"""The one prompt template shared by training (Axolotl alpaca JSONL, soi-mini) and inference.

The model reads an alpaca-style prompt and is trained to answer with the OIICS code's digits
followed by end-of-sequence, e.g. ``"### Response:\\n8621</s>"``.  The template is stored in
every model bundle together with its hash, so training and inference cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass

# Axolotl's "alpaca" prompt style, byte for byte (system prompt + turn format).
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
SOURCE_INSTRUCTION = (
    "Give the OIICS v2.01 source of injury code for this workplace accident report: "
    "the object, substance, machine, structure or person that produced the injury."
)
_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class PromptTemplate:
    """An alpaca prompt with a fixed instruction; ``{input}`` is the normalised narrative."""

    version: str = "alpaca-source-v1"
    system: str = ALPACA_SYSTEM
    turn: str = ALPACA_TURN
    instruction: str = SOURCE_INSTRUCTION
    max_input_chars: int = 2000
    """Narratives longer than this are cut (at a word boundary) before tokenisation."""

    @property
    def shared_prefix(self) -> str:
        """The text every prompt starts with: computed once by engines that can reuse it."""
        head, _ = self.turn.split("{input}")
        return self.system + head.format(instruction=self.instruction)

    @property
    def suffix(self) -> str:
        """The text after the narrative, ending where the code's first digit goes."""
        _, tail = self.turn.split("{input}")
        return tail

    def render(self, narrative: str) -> str:
        """Full prompt for one report (text before the answer)."""
        return self.shared_prefix + normalize_narrative(narrative, self.max_input_chars)[0] + self.suffix

    def answer(self, code: str) -> str:
        """The training target without the EOS token (the tokenizer's EOS is appended)."""
        return code

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PromptTemplate:
        return cls(**data)  # type: ignore[arg-type]


def normalize_narrative(text: str, max_chars: int) -> tuple[str, bool]:
    """Collapse whitespace, drop control characters, apply NFC; cut at ``max_chars``.

    Returns the text and whether it was truncated.
    """
    cleaned = _WS.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFC", text))).strip()
    if len(cleaned) <= max_chars:
        return cleaned, False
    cut = cleaned[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut), True
