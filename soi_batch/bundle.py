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

from soi_batch.bundle_files import bundle_file, check_links, read_json, tensor_shapes, weight_files
from soi_batch.checkpoint import check_architecture, check_tensors
from soi_batch.errors import BundleError, LabelSetError
from soi_batch.prompt import PromptTemplate
from soi_batch.taxonomy import TAXONOMY_VERSION, Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

MANIFEST = "soi_model.json"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_TOKENIZER_JSON = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Calibration temperatures a bundle may carry (the search interval of the fit): outside it the
confidences are all 0/1 or flat, and review routing stops meaning anything."""
EMBEDDED_DEFAULT = Path(__file__).parent / "models" / "soi-mini"
"""The soi-mini bundle inside the package (tests and tools that need a bundle on disk at once)."""


class Calibration(BaseModel):
    temperature: float = Field(1.0, ge=TEMPERATURE_BOUNDS[0], le=TEMPERATURE_BOUNDS[1])
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

    Checks every file the bundle names (inside the bundle, regular files, size limits, no pickle),
    the manifest (labels, prompt template, calibration), the tokenizer file, and the weights'
    tensor names and shapes (safetensors headers) against the model ``config.json`` describes.
    Raises :class:`BundleError` naming the missing or unsafe file and the fix.
    """
    path = resolve_model(model, cache_dir)
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; pass a model bundle directory (see README 'Model bundle')")
    manifest_path = path / MANIFEST
    if not manifest_path.exists() and not manifest_path.is_symlink():
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
    check_links(path)
    shapes = tensor_shapes(weight_files(path))
    if not (path / "config.json").exists():
        raise BundleError(f"{path}: config.json missing")
    check_architecture(path / "config.json", read_json(path, "config.json"))
    _check_tokenizer(path)
    manifest = _read_manifest(path)
    try:
        bundle = ModelBundle(path, manifest)
    except LabelSetError as exc:
        raise BundleError(f"{manifest_path}: {exc}") from exc
    check_tensors(path, shapes)
    log.info("model bundle %s from %s (%d labels, %d tensors)", bundle.model_id, path, len(manifest.labels),
             len(shapes))
    return bundle


def _read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    text = bundle_file(path, MANIFEST).read_text(encoding="utf-8")  # type: ignore[union-attr]
    try:
        manifest = Manifest.model_validate_json(text)
    except ValueError as exc:
        raise BundleError(f"{manifest_path}: invalid manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {manifest.format_version}, this soi-batch reads {FORMAT_VERSION}"
        )
    prompt = _check_prompt(manifest_path, manifest.prompt)
    if prompt.sha256 != manifest.prompt_sha256:
        raise BundleError(
            f"{manifest_path}: prompt_sha256 does not match the stored prompt template "
            "(the template was edited after training); re-package the bundle"
        )
    if not manifest.labels:
        raise BundleError(f"{manifest_path}: 'labels' is empty; the bundle must list the codes it was trained on")
    return manifest


def _check_prompt(manifest_path: Path, data: dict[str, Any]) -> PromptTemplate:
    """The manifest's prompt template, checked: known fields of the right types, exactly one
    ``{input}``, and no placeholder other than ``{instruction}`` before it."""
    try:
        prompt = PromptTemplate.from_dict(data)
    except TypeError as exc:
        raise BundleError(f"{manifest_path}: 'prompt' is not a prompt template ({exc}); re-package the bundle") from exc
    texts = (prompt.version, prompt.system, prompt.turn, prompt.instruction)
    if not all(isinstance(t, str) for t in texts) or not isinstance(prompt.max_input_chars, int) or \
            prompt.max_input_chars < 1:
        raise BundleError(f"{manifest_path}: 'prompt' needs text for version/system/turn/instruction and a "
                          "positive integer max_input_chars; re-package the bundle")
    count = prompt.turn.count("{input}")
    if count != 1:
        raise BundleError(f"{manifest_path}: the prompt template has {count} '{{input}}' placeholders in 'turn'; "
                          "it needs exactly one, where the narrative goes. Re-package the bundle")
    try:
        prompt.shared_prefix  # noqa: B018 - fills {instruction}: raises on any other placeholder
    except (KeyError, IndexError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: the prompt template's 'turn' cannot be filled ({exc!r}); only "
                          "{instruction} and {input} are placeholders (write other braces as {{ }})") from exc
    return prompt


def _check_tokenizer(path: Path) -> None:
    """A tokenizer file that is present, a regular file within its size limit, and parses (tokenizer.json)."""
    found = [name for name in _TOKENIZER_FILES if (path / name).exists() or (path / name).is_symlink()]
    if not found:
        raise BundleError(f"{path}: no tokenizer (expected one of {list(_TOKENIZER_FILES)})")
    for name in found:
        bundle_file(path, name)
    for name in _TOKENIZER_JSON:
        read_json(path, name, required=False)
    if "tokenizer.json" in found:
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the Rust parser raises a bare Exception
            raise BundleError(f"{path / 'tokenizer.json'}: not a tokenizer ({exc}); copy the bundle again") from exc


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
