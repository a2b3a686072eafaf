"""Engines: a causal LM that scores the next label token after a prompt (``base``).

``hf`` (transformers, CPU or GPU) and ``vllm_engine`` (GPU) implement it; ``registry`` maps
engine names to them and turns ``engine_options`` dicts into their typed options; ``threads``
is the one place torch's process-wide thread count is set.  Importing this package imports
neither torch nor vLLM.
"""

from soi_batch.engines.base import Engine, EngineInputs
from soi_batch.engines.registry import (
    EngineName,
    build_engine,
    engine_class,
    engine_names,
    engine_options,
    register_engine,
    resolve_engine_name,
)

__all__ = [
    "Engine",
    "EngineInputs",
    "EngineName",
    "build_engine",
    "engine_class",
    "engine_names",
    "engine_options",
    "register_engine",
    "resolve_engine_name",
]
