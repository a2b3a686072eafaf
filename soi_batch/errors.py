"""Every error soi_batch raises derives from :class:`SoiError`."""


class SoiError(Exception):
    """Base for every error soi_batch raises."""


class ConfigError(SoiError):
    """A setting is invalid; the message names the setting and the valid values."""


class InputSchemaError(SoiError):
    """The input table lacks a required column or has the wrong type."""


class InputReadError(SoiError):
    """The input file or table cannot be read."""


class BundleError(SoiError):
    """A model bundle is missing files, has unsafe weights or an inconsistent manifest."""


class LabelSetError(SoiError):
    """A label set does not match the OIICS taxonomy."""


class TokenizerError(SoiError):
    """The tokenizer cannot represent the label trie (e.g. it merges digits)."""
