"""Where tables live: local paths and URIs (``s3://``, ``gs://``, ``abfs://``, ``file://``).

A location is kept as the string the user gave: a URI is never made a :class:`~pathlib.Path`
(that would fold ``s3://bucket`` into ``s3:/bucket``).  ``file://`` URIs are local paths.

Storage options are one flat ``KEY=VALUE`` mapping in the names Delta Lake (``deltalake``, Rust
``object_store``) uses, case-insensitive: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``, …  Delta
tables get them as they are; Arrow's S3 filesystem (CSV and Parquet, read and written) gets the
ones it has a setting for (:func:`arrow_filesystem`).  Unset ones come from the environment
(the same variable names) as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow.fs as pafs

from soi_batch.errors import ConfigError

log = logging.getLogger(__name__)

StorageOptions = Mapping[str, str]

_S3_KEYS: dict[str, str] = {
    "aws_access_key_id": "access_key", "access_key_id": "access_key",
    "aws_secret_access_key": "secret_key", "secret_access_key": "secret_key",
    "aws_session_token": "session_token", "aws_token": "session_token", "session_token": "session_token",
    "token": "session_token",
    "aws_region": "region", "region": "region", "aws_default_region": "region",
    "aws_endpoint_url": "endpoint", "aws_endpoint": "endpoint", "endpoint_url": "endpoint", "endpoint": "endpoint",
    "aws_allow_http": "allow_http", "allow_http": "allow_http",
    "aws_virtual_hosted_style_request": "virtual_hosted", "virtual_hosted_style_request": "virtual_hosted",
}
"""Delta Lake's S3 option names (and their short aliases) → what Arrow's S3 filesystem is told."""


def is_uri(location: str | Path) -> bool:
    """A remote URI (``s3://…``, ``gs://…``): anything with a scheme except ``file://``."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> str:
    """A local location as a path: a ``file://`` URI's path, else the location as given."""
    text = str(location)
    if text.startswith("file://"):
        return unquote(urlsplit(text).path)
    return text


def absolute_location(location: str | Path) -> str:
    """A remote URI as it is; a local path (or ``file://`` URI) made absolute (Ray's workers keep
    the working directory Ray started in, and Ray's Delta writer needs an absolute path)."""
    text = str(location)
    if is_uri(text):
        return text
    return str(Path(local_path(text)).expanduser().absolute())


def join(location: str, name: str) -> str:
    """``location/name`` for a URI or a local path."""
    return f"{location.rstrip('/')}/{name}"


def parse_storage_options(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", …]`` (the repeatable ``--storage-option``) as a mapping; ConfigError on a malformed pair."""
    options: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--storage-option {pair!r}: expected KEY=VALUE, e.g. AWS_REGION=eu-west-1")
        options[key.strip()] = value
    return options


_SECRET_WORDS = ("secret", "key", "token", "password", "sas", "credential")


def redacted(storage_options: StorageOptions | None) -> dict[str, str]:
    """The options with secret values (keys, tokens, passwords) replaced by ``***``, for logs and manifests."""
    return {k: "***" if any(w in k.lower() for w in _SECRET_WORDS) else v for k, v in (storage_options or {}).items()}


def delta_storage_options(location: str, storage_options: StorageOptions | None) -> dict[str, str] | None:
    """The options Delta Lake gets for ``location``: as given (None for a local path or no options).

    An ``http://`` S3 endpoint also sets ``AWS_ALLOW_HTTP`` (Delta Lake refuses plain HTTP otherwise;
    Arrow follows the endpoint's scheme).
    """
    if not is_uri(location) or not storage_options:
        return None
    options = dict(storage_options)
    lowered = {k.lower(): v for k, v in options.items()}
    endpoint = next((lowered[k] for k, v in _S3_KEYS.items() if v == "endpoint" and k in lowered), "")
    if endpoint.startswith("http://") and not any(_S3_KEYS.get(k) == "allow_http" for k in lowered):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def arrow_filesystem(location: str, storage_options: StorageOptions | None = None
                     ) -> tuple[pafs.FileSystem, str]:
    """Arrow's filesystem for ``location`` and the path inside it.

    Local paths and ``file://`` URIs: the local filesystem.  ``s3://`` (``s3a://``): Arrow's S3
    filesystem with the storage options it has a setting for (key, secret, session token,
    region, endpoint; an ``http://`` endpoint is reached over plain HTTP); other options only
    reach Delta tables.  Other schemes (``gs://``, ``abfs://``, ``hdfs://``): Arrow's filesystem
    for the URI, its credentials from the environment.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), absolute_location(location)
    scheme, _, rest = location.partition("://")
    if scheme.lower() in ("s3", "s3a"):
        return _s3_filesystem(storage_options or {}), rest.rstrip("/")
    if storage_options:
        log.debug("%s: storage options go to Delta tables only; Arrow takes %s:// credentials from the environment",
                  location, scheme)
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{location}: cannot open this URI's filesystem: {exc}") from exc


def _s3_filesystem(storage_options: StorageOptions) -> pafs.S3FileSystem:
    settings: dict[str, str] = {}
    for key, value in storage_options.items():
        setting = _S3_KEYS.get(key.lower())
        if setting is None:
            log.debug("storage option %s has no Arrow S3 setting; it reaches Delta tables only", key)
        else:
            settings[setting] = value
    kwargs: dict[str, object] = {}
    for name in ("access_key", "secret_key", "session_token", "region"):
        if name in settings:
            kwargs[name] = settings[name]
    endpoint = settings.get("endpoint")
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        kwargs["endpoint_override"] = host if sep else endpoint
        kwargs["scheme"] = scheme if sep else "https"
    if settings.get("virtual_hosted", "").lower() == "true":
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)
