"""Every error soi_batch raises derives from :class:`SoiError`.

Errors about a value the caller passed (a setting, a column, a label) are also ``ValueError``\\s,
so code written against the standard exception keeps working.
"""


class SoiError(Exception):
    """Base for every error soi_batch raises."""


class ConfigError(SoiError, ValueError):
    """A setting is invalid; the message names the setting, its value and the valid values."""


class InputSchemaError(SoiError, ValueError):
    """The input table lacks a required column or has the wrong type."""


class InputReadError(SoiError):
    """The input file or table cannot be read."""


class BundleError(SoiError):
    """A model bundle is missing files, has unsafe weights or an inconsistent manifest."""


class LabelSetError(SoiError, ValueError):
    """A label set does not match the OIICS taxonomy, or a code is not in the label set."""


class TokenizerError(SoiError):
    """The tokenizer cannot represent the label trie (e.g. it merges digits)."""


class CalibrationError(SoiError):
    """The temperature cannot be fitted on the validation data."""


class ConcurrentWriteError(SoiError, RuntimeError):
    """Another writer committed to the output table during this run (one writer per table)."""


class EngineCallError(SoiError, ValueError):
    """An engine was called outside its contract (a prompt without the template's prefix, a
    prefix scored twice): a bug in the caller (the scorer, or a custom engine's user), not in the data."""


class NotFittedError(SoiError, RuntimeError):
    """A model is asked to predict before it was fitted."""
