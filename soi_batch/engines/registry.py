"""Engine names → engine classes, and their options checked and typed before any weights load.

Each engine class states its options type, how it is built and whether threads may share it
(see :class:`~soi_batch.engines.base.Engine`); this module only maps names to classes::

    name = resolve_engine_name(config.engine)                      # "auto" → "hf"
    options = engine_options(name, {"quantization": "fp8"}, device="cuda")  # HFEngineConfig
    engine = build_engine(name, inputs, options)                   # loads the weights

Importing this module imports neither torch nor vLLM: the engines import them when built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from soi_batch.engines.base import Engine, EngineInputs
from soi_batch.engines.hf import HFEngine
from soi_batch.engines.vllm_engine import VLLMEngine
from soi_batch.errors import ConfigError

EngineName = Literal["auto", "hf", "vllm"]
"""The engines shipped with the package, and "auto"."""
AUTO_ENGINE = "hf"
"""What "auto" means: the transformers engine, on CPU and GPU alike (it measured 2-3x faster
than the vLLM engine on an H100, bench/RESULTS.md; "vllm" stays available by name)."""

_ENGINES: dict[str, type[Engine]] = {}


def register_engine(name: str, engine: type[Engine]) -> None:
    """Make ``engine`` buildable as ``ClassifierConfig(engine=name)``."""
    if name == "auto" or name in _ENGINES:
        raise ConfigError(f"engine name {name!r} is taken; registered: {', '.join(_ENGINES)}")
    _ENGINES[name] = engine


register_engine("hf", HFEngine)
register_engine("vllm", VLLMEngine)


def engine_names() -> tuple[str, ...]:
    """The registered engines, e.g. ``("hf", "vllm")`` ("auto" is not one: it picks one of them)."""
    return tuple(_ENGINES)


def resolve_engine_name(name: str) -> str:
    """``name`` checked, with "auto" replaced by :data:`AUTO_ENGINE`."""
    if name == "auto":
        return AUTO_ENGINE
    if name not in _ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(('auto', *_ENGINES))}; got {name!r}")
    return name


def engine_class(name: str) -> type[Engine]:
    """The class of engine ``name`` ("auto" included)."""
    return _ENGINES[resolve_engine_name(name)]


@cache
def _adapter(options_type: type[Any]) -> TypeAdapter[Any]:
    return TypeAdapter(options_type)


def engine_options(name: str, options: Mapping[str, Any], *, device: str = "auto") -> Any:
    """``options`` (a dict, as the CLI and YAML configs give) as engine ``name``'s typed options.

    ``device`` (``ClassifierConfig.device``) fills the engine's ``device`` option when it has one
    and ``options`` does not set it.  Unknown options, values of the wrong type and invalid
    combinations raise :class:`ConfigError` naming the engine, the option and the valid ones.
    Values are converted where the conversion is lossless (YAML's ``"2"`` → ``2``, a list → a tuple).
    """
    name = resolve_engine_name(name)
    options_type = _ENGINES[name].options_type
    known = [f.name for f in fields(options_type) if f.init]
    if not isinstance(options, Mapping):
        raise ConfigError(f"engine {name!r} options must be a mapping of option → value, "
                          f"got {type(options).__name__}; its options are: {', '.join(sorted(known))}")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"engine {name!r} has no option(s) {', '.join(map(str, unknown))}; "
                          f"its options are: {', '.join(sorted(known))}")
    values = dict(options)
    if "device" in known:
        values.setdefault("device", device)
    try:
        return _adapter(options_type).validate_python(values)
    except ValidationError as exc:
        errors = exc.errors()
        own = [e["ctx"]["error"] for e in errors if isinstance(e.get("ctx", {}).get("error"), ConfigError)]
        if own:  # the options type's own checks (__post_init__ raises ConfigError, a ValueError)
            raise ConfigError(f"engine {name!r}: {own[0]}") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in errors)
        raise ConfigError(f"engine {name!r} option {problems}; its options are: "
                          f"{', '.join(sorted(known))}") from None


def build_engine(name: str, inputs: EngineInputs, options: Any) -> Engine:
    """Engine ``name`` ("auto" included) built from ``inputs`` with its typed ``options``."""
    engine = engine_class(name)
    if not isinstance(options, engine.options_type):
        raise ConfigError(f"engine {name!r} takes {engine.options_type.__name__}, got {type(options).__name__}; "
                          "convert a dict with engine_options()")
    return engine.build(inputs, options)
