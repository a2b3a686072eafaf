"""The files of a model bundle, found and opened safely: every path a bundle names stays inside it.

* A name must be relative, without ``..``; after symlinks it must still lie inside the bundle
  (a hub snapshot's links into its own ``blobs/`` folder are allowed).
* Only regular files are opened (a FIFO or device named ``model.safetensors`` is refused, never
  read), and each kind has a size limit, checked before reading.
* The weights are safetensors only: ``model.safetensors``, else the shards that
  ``model.safetensors.index.json`` names, the files transformers and vLLM read.  Their headers
  give the tensor names and shapes; no weight is read here.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from soi_batch.errors import BundleError

SINGLE_WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MB = 1024 * 1024
SIZE_LIMITS: dict[str, int] = {"tokenizer.json": 50 * MB, "tokenizer.model": 50 * MB, WEIGHTS_INDEX: 50 * MB}
"""Largest file read, by name; other JSON files: :data:`JSON_LIMIT`."""
JSON_LIMIT = 10 * MB


def allowed_roots(bundle: Path) -> tuple[Path, ...]:
    """Folders the bundle's files may resolve into: the bundle, and for a hub cache snapshot
    (``models--org--name/snapshots/REV``) that repository's ``blobs`` folder."""
    root = bundle.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root, root.parent.parent / "blobs"
    return (root,)


def bundle_file(bundle: Path, name: str, *, limit: int | None = None, required: bool = True) -> Path | None:
    """``bundle/name`` resolved, checked to be a regular file inside the bundle and within ``limit`` bytes
    (None: :data:`SIZE_LIMITS` by file name, :data:`JSON_LIMIT` for other JSON files, else no limit).

    Returns None for a missing file when not ``required``.  Raises :class:`BundleError` naming
    the file and the fix.
    """
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise BundleError(f"{bundle}: the bundle names the file {name!r}, which is not a path inside the bundle; "
                          "every file a bundle uses must be in its directory (re-package the bundle)")
    path = bundle / rel
    if not path.exists() and not path.is_symlink():
        if required:
            raise BundleError(f"{path}: missing; copy the bundle again")
        return None
    real = path.resolve()
    if not any(real.is_relative_to(root) for root in allowed_roots(bundle)):
        raise BundleError(f"{path}: a symlink to {real}, outside the bundle; bundles are read only from their own "
                          "directory: copy the file in (cp -L) instead of linking it")
    try:
        info = real.stat()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror}); copy the bundle again") from exc
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{path}: not a regular file (a directory, FIFO or device); bundle files must be plain "
                          "files: copy the bundle again")
    limit = limit if limit is not None else SIZE_LIMITS.get(rel.name, JSON_LIMIT if rel.suffix == ".json" else None)
    if limit is not None and info.st_size > limit:
        raise BundleError(f"{path}: {info.st_size / MB:.1f} MB, over the {limit / MB:.0f} MB limit for {rel.name}; "
                          "this is not a tokenizer or config soi-batch can use (check the bundle's origin)")
    return real


def read_json(bundle: Path, name: str, *, required: bool = True) -> Any:
    """The JSON value of ``bundle/name``, read after :func:`bundle_file`'s checks (None: absent, optional)."""
    path = bundle_file(bundle, name, required=required)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle / name}: not valid JSON ({exc}); copy the bundle again") from exc


def check_links(bundle: Path) -> None:
    """Refuse any entry of the bundle directory that links outside it, or is neither a file nor a folder."""
    roots = allowed_roots(bundle)
    for entry in sorted(bundle.iterdir()):
        real = entry.resolve()
        if entry.is_symlink() and not any(real.is_relative_to(root) for root in roots):
            raise BundleError(f"{entry}: a symlink to {real}, outside the bundle; bundles are read only from their "
                              "own directory: copy the file in (cp -L) instead of linking it")
        if not (real.is_file() or real.is_dir()):
            raise BundleError(f"{entry}: not a regular file (a FIFO, device or broken link); bundle files must be "
                              "plain files: copy the bundle again")


def weight_files(bundle: Path) -> list[Path]:
    """The safetensors files an engine loads, in the order transformers picks them.

    ``model.safetensors`` if present, else the files ``model.safetensors.index.json`` maps tensors
    to (each a ``.safetensors`` path inside the bundle).
    """
    named = _named_weight_files(bundle)
    stray = sorted({p.name for p in bundle.glob("*.safetensors")} - set(named))
    if stray:
        raise BundleError(f"{bundle}: weight files {stray} are not part of the checkpoint ({sorted(named)}); "
                          "engines differ in whether they load them: delete them or list them in the index")
    return list(named.values())


def _named_weight_files(bundle: Path) -> dict[str, Path]:
    """Name as the bundle gives it → the resolved, checked file."""
    single = bundle_file(bundle, SINGLE_WEIGHTS, required=False)
    has_index = (bundle / WEIGHTS_INDEX).exists() or (bundle / WEIGHTS_INDEX).is_symlink()
    if single is not None and has_index:
        raise BundleError(f"{bundle}: both {SINGLE_WEIGHTS} and {WEIGHTS_INDEX}; engines differ in which they load: "
                          "keep one")
    if single is not None:
        return {SINGLE_WEIGHTS: single}
    index = read_json(bundle, WEIGHTS_INDEX, required=False)
    if index is None:
        found = sorted(p.name for p in bundle.glob("*.safetensors"))
        if not found:
            raise BundleError(f"{bundle}: no *.safetensors weights found")
        raise BundleError(f"{bundle}: no {SINGLE_WEIGHTS} or {WEIGHTS_INDEX} (found only {found}); "
                          f"name the weights {SINGLE_WEIGHTS}, or add the index of the shards")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise BundleError(f"{bundle / WEIGHTS_INDEX}: no 'weight_map' of tensor names to files; re-package the bundle")
    files = {}
    for name in sorted(set(weight_map.values())):
        if not name.endswith(".safetensors"):
            raise BundleError(f"{bundle / WEIGHTS_INDEX}: names the weight file {name!r}, not a .safetensors file; "
                              "pickle weights are refused (they can run code when loaded): convert them to safetensors")
        files[name] = bundle_file(bundle, name)
    return files  # type: ignore[return-value]


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from the safetensors headers of ``files`` (no weight is read)."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as handle:
                for key in handle.keys():  # noqa: SIM118 - a safetensors handle has no __iter__
                    if key in shapes:
                        raise BundleError(f"{file}: tensor {key!r} is also in another weight file; re-package the bundle")
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"{file}: not a readable safetensors file ({exc}); copy the bundle again") from exc
    return shapes
