"""soi-batch: source-of-injury (OIICS v2.01) coding of accident reports with a causal LM.

The public names, loaded on first use so that ``import soi_batch`` stays light (no torch, Ray or
Spark until a name that needs them is used)::

    from soi_batch import Classifier, ClassifierConfig   # Python, one process
    from soi_batch import classify_dataset               # Ray Data
    from soi_batch import classify_df                    # Spark

Everything else lives in the modules named in the README's "How the code is laid out".
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from soi_batch.version import installed_version

__version__ = installed_version()

_PUBLIC: dict[str, str] = {
    "Classifier": "soi_batch.classifier",
    "ClassifierConfig": "soi_batch.classifier",
    "Prediction": "soi_batch.classifier",
    "load_bundle": "soi_batch.bundle",
    "ModelBundle": "soi_batch.bundle",
    "DEFAULT_MODEL": "soi_batch.named_models",
    "NAMED_MODELS": "soi_batch.named_models",
    "classify_dataset": "soi_batch.ray_data",
    "RayOptions": "soi_batch.ray_data",
    "classify_df": "soi_batch.spark",
    "SoiError": "soi_batch.errors",
    "ConfigError": "soi_batch.errors",
    "InputReadError": "soi_batch.errors",
    "InputSchemaError": "soi_batch.errors",
    "BundleError": "soi_batch.errors",
}

__all__ = ["__version__", *_PUBLIC.keys()]  # noqa: PLE0604


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'soi_batch' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
