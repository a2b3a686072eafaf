"""Model bundles: one directory holding everything an engine needs.

Layout::

    BUNDLE/
      config.json             Hugging Face model config (a causal LM, e.g. MistralForCausalLM)
      model.safetensors       weights (or sharded *.safetensors + index); never pickle
      tokenizer.json, tokenizer_config.json, special_tokens_map.json ...
      soi_model.json          the manifest below
      README.md               the model card (optional)

The manifest carries the label set, the prompt template and its hash, the calibration, the
training data fingerprint, evaluation metrics and how the bundle was built.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from soi_batch.errors import BundleError, LabelSetError
from soi_batch.prompt import PromptTemplate
from soi_batch.taxonomy import TAXONOMY_VERSION, Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

MANIFEST = "soi_model.json"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
EMBEDDED_DEFAULT = Path(__file__).parent / "models" / "soi-mini"
"""The soi-mini bundle inside the package (tests and tools that need a bundle on disk at once)."""


class Calibration(BaseModel):
    temperature: float = Field(1.0, gt=0)
    """Every step's logits are divided by this before the trie softmax."""
    review_threshold: float = Field(0.0, ge=0, le=1)
    """Rows whose ``review_level`` confidence is below this get ``needs_review``."""
    review_level: str = "division"
    review_target_accuracy: float | None = None
    """The validation accuracy of the auto-coded part the threshold was chosen for."""
    fitted_on: str | None = None


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    model_id: str
    model_version: str
    taxonomy_version: str = TAXONOMY_VERSION
    label_level: str = "oiics-source-major_group..detail"
    labels: list[str]
    prompt: dict[str, Any]
    prompt_sha256: str
    calibration: Calibration = Calibration()
    data_fingerprint: str | None = None
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class ModelBundle:
    """A validated bundle directory; weights are loaded by an engine, not here."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self.prompt = PromptTemplate.from_dict(manifest.prompt)
        self.taxonomy: Taxonomy = load_taxonomy().with_labels(manifest.labels)

    @property
    def model_id(self) -> str:
        return f"{self.manifest.model_id}@{self.manifest.model_version}"

    @property
    def calibration(self) -> Calibration:
        return self.manifest.calibration

    def __repr__(self) -> str:
        return f"ModelBundle({self.model_id!r}, path={str(self.path)!r})"


def resolve_model(model: str | Path | None, cache_dir: Path | None = None) -> Path:
    """A local bundle directory for ``model``: a named model, a path, or a hub id.

    Names (``soi-mini``, ``soi-small``; None is :data:`soi_batch.named_models.DEFAULT_MODEL`) come
    first: soi-small is built into ``cache_dir`` on first use (see :mod:`soi_batch.named_models`);
    write ``./soi-small`` for a local directory of that name.  Hub ids (``org/name``) are fetched
    with ``huggingface_hub.snapshot_download`` restricted to safetensors, JSON and tokenizer files
    (honours ``HF_HUB_OFFLINE``).
    """
    from soi_batch.named_models import DEFAULT_MODEL, NAMED_MODELS, resolve_named

    if model is None or (isinstance(model, str) and model in NAMED_MODELS):
        return resolve_named(model or DEFAULT_MODEL, cache_dir)
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve()
    text = str(model)
    if is_hub_id(text):
        from huggingface_hub import snapshot_download

        try:
            return Path(
                snapshot_download(
                    text,
                    allow_patterns=["*.safetensors", "*.json", "tokenizer.model", "*.md", "*.txt"],
                )
            )
        except Exception as exc:  # network, auth, offline mode: say which model and why
            raise BundleError(f"cannot fetch model {text!r} from the hub: {exc}") from exc
    from soi_batch.named_models import NAMED_MODELS

    raise BundleError(f"model {text!r} is not a named model ({', '.join(sorted(NAMED_MODELS))}), "
                      "a directory, or a hub id (org/name)")


def is_hub_id(model: str | Path | None) -> bool:
    """``org/name`` that is neither a named model nor an existing path."""
    from soi_batch.named_models import NAMED_MODELS

    if model is None or str(model) in NAMED_MODELS or Path(model).expanduser().exists():
        return False
    text = str(model)
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def load_bundle(model: str | Path | None = None, cache_dir: Path | None = None) -> ModelBundle:
    """Validate a bundle directory before any weights are read (``model`` as :func:`resolve_model`).

    Raises :class:`BundleError` naming the missing or unsafe file and the fix.
    """
    path = resolve_model(model, cache_dir)
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; pass a model bundle directory (see README 'Model bundle')")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{path}: no {MANIFEST}; this is not a soi-batch bundle. Build one with "
            "`soi-batch package` (README 'Training')"
        )
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise BundleError(
            f"{path}: pickle weight files {pickles} are refused (they can run code when loaded); "
            "convert them to safetensors and delete them"
        )
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise BundleError(f"{path}: no *.safetensors weights found")
    for file in weights:
        _check_safetensors_header(file)
    if not (path / "config.json").is_file():
        raise BundleError(f"{path}: config.json missing")
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise BundleError(f"{path}: no tokenizer (expected one of {list(_TOKENIZER_FILES)})")
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{manifest_path}: invalid manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {manifest.format_version}, this soi-batch reads {FORMAT_VERSION}"
        )
    prompt = PromptTemplate.from_dict(manifest.prompt)
    if prompt.sha256 != manifest.prompt_sha256:
        raise BundleError(
            f"{manifest_path}: prompt_sha256 does not match the stored prompt template "
            "(the template was edited after training); re-package the bundle"
        )
    if not manifest.labels:
        raise BundleError(f"{manifest_path}: 'labels' is empty; the bundle must list the codes it was trained on")
    try:
        bundle = ModelBundle(path, manifest)
    except LabelSetError as exc:
        raise BundleError(f"{manifest_path}: {exc}") from exc
    log.info("model bundle %s from %s (%d labels)", bundle.model_id, path, len(manifest.labels))
    return bundle


def _check_safetensors_header(file: Path) -> None:
    """Read only the safetensors header (tensor names, shapes, offsets), not the weights."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{file}: not a readable safetensors file ({exc}); copy the bundle again") from exc


def write_manifest(path: str | Path, manifest: Manifest) -> Path:
    """Write ``soi_model.json`` into a bundle directory."""
    out = Path(path) / MANIFEST
    out.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return out


def new_manifest(
    *,
    model_id: str,
    model_version: str,
    prompt: PromptTemplate,
    taxonomy: Taxonomy | None = None,
    **fields: Any,
) -> Manifest:
    """A manifest for a freshly trained model, with the label set and prompt filled in."""
    taxonomy = taxonomy or load_taxonomy()
    return Manifest(
        model_id=model_id,
        model_version=model_version,
        labels=list(taxonomy.labels),
        prompt=prompt.to_dict(),
        prompt_sha256=prompt.sha256,
        **fields,
    )
