"""The package's layers import downwards only, without cycles, and never import ``training``.

The layers are those of the README's "How the code is laid out"; every import of ``soi_batch``
counts, lazy ones inside functions included (they are read from the source, not executed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "soi_batch"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundations", ("errors", "schema", "taxonomy", "prompt", "storage", "tables", "version")),
    ("models", ("pretrained", "named_models", "bundle_files", "checkpoint", "bundle", "packaging", "datasets")),
    ("core", ("encoding", "engines", "scorer", "metrics", "classifier", "calibration")),
    ("runners", ("checks", "ray_data", "spark", "nightly")),
    ("reports", ("evaluation", "trends")),
    ("commands", ("commands", "cli", "__main__")),
)
LAYER_OF = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (``from soi_batch.x import y`` counts as
    ``soi_batch.x.y`` when that is a module, else ``soi_batch.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; the package uses absolute imports")
            base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*candidate.split("."))).is_dir()
                names.add(candidate if is_module else base)
    return names


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> int:
    if module == "soi_batch":
        raise AssertionError("a module imports the package root soi_batch, which re-exports every layer; import "
                             "the module that defines the name instead")
    top = module.split(".")[1]
    if top not in LAYER_OF:
        raise AssertionError(f"{module} is in no layer; add soi_batch.{top} to LAYERS (and to the README)")
    return LAYER_OF[top]


def test_every_module_has_a_layer_and_imports_downwards_only():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m, deps in graph.items() if m != "soi_batch" for d in deps if _layer(d) > _layer(m)]
    assert not upward, "imports that run back up:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_package_never_imports_training_nor_edits_sys_path():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        imported = _imports(path)
        if any(name == "training" or name.startswith("training.") for name in imported):
            offenders.append(f"{path.relative_to(PACKAGE.parent)} imports training")
        if "sys.path" in path.read_text():
            offenders.append(f"{path.relative_to(PACKAGE.parent)} edits sys.path")
    assert not offenders, offenders


def test_the_checker_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from soi_batch.engines import registry\n    import soi_batch.tables\n")
    assert {"soi_batch.engines.registry", "soi_batch.tables"} <= _imports(source)


def test_the_public_names_load_lazily_and_are_the_modules_own():
    import subprocess
    import sys

    probe = ("import sys, soi_batch; heavy = [m for m in ('torch', 'ray', 'pyspark', 'transformers') if m in sys.modules]; "
             "print(heavy); print(soi_batch.__version__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1]

    import soi_batch
    from soi_batch.classifier import Classifier
    from soi_batch.ray_data import classify_dataset

    assert soi_batch.Classifier is Classifier and soi_batch.classify_dataset is classify_dataset
    for name in soi_batch.__all__:
        assert getattr(soi_batch, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'classify'"):
        soi_batch.classify  # noqa: B018
