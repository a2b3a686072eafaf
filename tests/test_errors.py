"""One error hierarchy, and every setting checked when its config is built.

The hierarchy is read from the package source with ``ast`` (no module is imported to find
it), so an exception class added anywhere in ``soi_batch`` is covered without listing it here.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import soi_batch
from soi_batch import errors
from soi_batch.bundle import EMBEDDED_DEFAULT, load_bundle
from soi_batch.calibration import calibrate_bundle, fit_temperature
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.encoding import PromptEncoder
from soi_batch.errors import (
    CalibrationError,
    ConcurrentWriteError,
    ConfigError,
    InputSchemaError,
    LabelSetError,
    SoiError,
)
from soi_batch.metrics import accuracy, accuracy_at_coverage, expected_calibration_error
from soi_batch.nightly import NightlyConfig
from soi_batch.nightly.sink import NEW_ID_COL, DeltaSink
from soi_batch.ray_data import RayOptions
from soi_batch.scorer import LabelTrie, PathSteps, ScorerConfig

PACKAGE = Path(soi_batch.__file__).parent
REPO = PACKAGE.parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
BUILTIN_ERRORS = {name for name, obj in vars(builtins).items()
                  if isinstance(obj, type) and issubclass(obj, BaseException)}
def _classes() -> dict[str, tuple[str, list[str]]]:
    """Every class in the package: name -> (file, names of its bases)."""
    found: dict[str, tuple[str, list[str]]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                found[node.name] = (str(path.relative_to(PACKAGE)), bases)
    return found


def _is_exception(name: str, classes: dict[str, tuple[str, list[str]]]) -> bool:
    if name in BUILTIN_ERRORS:
        return True
    return name in classes and any(_is_exception(b, classes) for b in classes[name][1])


def _derives_from_soi_error(name: str, classes: dict[str, tuple[str, list[str]]]) -> bool:
    return name == "SoiError" or (name in classes and any(_derives_from_soi_error(b, classes)
                                                          for b in classes[name][1]))


def test_every_exception_class_in_the_package_derives_from_soi_error() -> None:
    classes = _classes()
    exceptions = sorted(n for n in classes if _is_exception(n, classes))
    assert {"SoiError", "ConfigError", "ConcurrentWriteError", "CalibrationError"} <= set(exceptions)
    stray = [f"{classes[n][0]}: {n}({', '.join(classes[n][1])})" for n in exceptions
             if not _derives_from_soi_error(n, classes)]
    assert not stray, f"exception classes that do not derive from SoiError: {stray}"
    for name in dir(errors):  # and at runtime, through the real MRO
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, SoiError), name


def test_the_package_raises_only_its_own_errors() -> None:
    """No ``raise ValueError(...)`` or ``assert`` a user can reach; re-raising (``raise``) is fine, and
    so is the AttributeError that Python's protocol asks of a module's ``__getattr__``."""
    found = []
    for path in SOURCES:
        rel = str(path.relative_to(PACKAGE))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        protocol = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
                    for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in protocol:
                continue
            if isinstance(node, ast.Assert):
                found.append(f"{rel}:{node.lineno}: assert")
            elif isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Name) and call.id in BUILTIN_ERRORS - {"NotImplementedError"}:
                    found.append(f"{rel}:{node.lineno}: raise {call.id}")
    assert not found, found


def test_value_errors_stay_value_errors() -> None:
    """Code written against ``except ValueError`` (settings, columns, labels) keeps working."""
    for cls in (ConfigError, InputSchemaError, LabelSetError):
        assert issubclass(cls, ValueError) and issubclass(cls, SoiError)
    assert issubclass(ConcurrentWriteError, RuntimeError)
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(np.array([1.2]), np.array([True]))


# --- ClassifierConfig / ScorerConfig: refused, not replaced by a default ------------------------

@pytest.mark.parametrize("temperature", [0.0, 0, -1.0, math.nan, math.inf, "1.0", True])
def test_classifier_config_refuses_a_temperature_that_cannot_scale_logits(temperature: object) -> None:
    # temperature=0.0 used to become the bundle's temperature through `or`
    with pytest.raises(ConfigError, match=r"temperature must be a finite number > 0 .*or None for the bundle's "
                                          r"calibrated temperature; got"):
        ClassifierConfig(temperature=temperature)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        ScorerConfig(temperature=temperature)  # type: ignore[arg-type]


def test_classifier_config_takes_valid_settings_as_given() -> None:
    config = ClassifierConfig(temperature=0.25, beam=1, max_prompt_tokens=200, top_k=50, batch_size=1)
    assert (config.temperature, config.beam, config.max_prompt_tokens) == (0.25, 1, 200)
    assert ClassifierConfig(temperature=np.float32(0.5), beam=None).temperature == 0.5
    assert ScorerConfig(beam=np.int64(2), temperature=np.float64(3.0)).beam == 2


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("beam", 0, r"beam must be a whole number ≥ 1, or None to expand the whole trie; got 0"),
    ("beam", -3, r"beam must be .*; got -3"),
    ("beam", 2.5, r"beam must be .*; got 2.5"),
    ("max_prompt_tokens", 0, r"max_prompt_tokens must be a whole number ≥ 1 .*or None for 512; got 0"),
    ("max_prompt_tokens", -1, r"max_prompt_tokens .*got -1"),
    ("batch_size", 0, r"batch_size must be a whole number ≥ 1, got 0"),
    ("batch_size", "64", r"batch_size must be a whole number ≥ 1, got '64'"),
    ("top_k", 0, r"top_k must be a whole number between 1 and 50, got 0"),
    ("top_k", 51, r"top_k must be .* got 51"),
])
def test_classifier_config_checks_each_setting_up_front(setting: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClassifierConfig(**{setting: value})


def test_scorer_config_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="beam must be a whole number ≥ 1"):
        ScorerConfig(beam=0)


def test_max_prompt_tokens_must_leave_room_for_the_narrative() -> None:
    bundle = load_bundle(EMBEDDED_DEFAULT)
    encoder = PromptEncoder.from_bundle(bundle, max_prompt_tokens=512)
    template = len(encoder.shared_prefix_ids) + len(encoder.suffix_ids)
    with pytest.raises(ConfigError, match=rf"max_prompt_tokens={template} leaves no room for the narrative: "
                                          rf"the prompt template alone is {template} tokens"):
        PromptEncoder.from_bundle(bundle, max_prompt_tokens=template)
    assert PromptEncoder.from_bundle(bundle, max_prompt_tokens=template + 1).max_prompt_tokens == template + 1
    with pytest.raises(ConfigError, match="leaves no room for the narrative"):  # before any weights load
        Classifier(bundle, ClassifierConfig(engine="hf", max_prompt_tokens=10))


def test_label_trie_and_path_steps_name_the_bad_code() -> None:
    with pytest.raises(LabelSetError, match=r"label '6A' is not a string of digits"):
        LabelTrie(["66", "6A"])
    clf = Classifier.load(None, ClassifierConfig(engine="hf", batch_size=8, engine_options={"num_threads": 2}))
    with pytest.raises(LabelSetError, match=r"code '12345' is not in the model's label set"):
        clf.path_steps(["A worker fell from a ladder."], ["12345"])


# --- calibration ----------------------------------------------------------------------------------

def _steps(scores: np.ndarray, target: int) -> PathSteps:
    allowed = np.zeros((1, 11), dtype=bool)
    allowed[0, :3] = True
    return PathSteps(scores.reshape(1, 11).astype(np.float32), allowed, np.array([target]))


def test_fit_temperature_errors_name_the_cause() -> None:
    with pytest.raises(LabelSetError, match="do not follow the label trie"):
        fit_temperature([_steps(np.zeros(11), target=5)])  # token 5 is not allowed at that step
    nan = np.zeros(11)
    nan[1] = np.nan
    with pytest.raises(CalibrationError, match=r"did not converge .*NaN or inf"):
        fit_temperature([_steps(nan, target=0)])


def test_calibrate_bundle_checks_its_settings_before_loading_anything(tmp_path: Path) -> None:
    missing = tmp_path / "no-bundle"  # never read: the settings are refused first
    with pytest.raises(ConfigError, match=r"target_accuracy must be in \(0, 1\] .*got 1.5"):
        calibrate_bundle(missing, ["text"], ["66"], target_accuracy=1.5)
    with pytest.raises(ConfigError, match="batch_size must be a whole number ≥ 1, got 0"):
        calibrate_bundle(missing, ["text"], ["66"], batch_size=0)


# --- metrics --------------------------------------------------------------------------------------

def test_metric_inputs_are_checked_with_soi_errors() -> None:
    with pytest.raises(InputSchemaError, match=r"probabilities in \[0, 1\]; got values from 0.5 to 1.2"):
        expected_calibration_error(np.array([0.5, 1.2]), np.array([True, False]))
    with pytest.raises(InputSchemaError, match="2 labels but 1 predictions"):
        accuracy(["66", "67"], ["66"])
    with pytest.raises(ConfigError, match=r"coverage must be in \(0, 1\]"):
        accuracy_at_coverage(np.array([0.9]), np.array([True]), coverages=(0.0,))


# --- Ray options and the nightly config -----------------------------------------------------------

@pytest.mark.parametrize(("setting", "value", "message"), [
    ("num_actors", 0, r"num_actors must be a whole number ≥ 1, or None for the default; got 0"),
    ("batch_size", 0, r"batch_size must be a whole number ≥ 1, or None for the default; got 0"),
    ("torch_threads", -1, r"torch_threads must be .*; got -1"),
    ("cpus_per_actor", -0.5, r"cpus_per_actor must be a number ≥ 0 \(Ray resources each actor reserves\), or None for the default; got -0.5"),
    ("gpus_per_actor", math.nan, r"gpus_per_actor must be a number ≥ 0 .*or None for the default; got nan"),
])
def test_ray_options_check_each_setting_up_front(setting: str, value: object, message: str) -> None:
    # num_actors=0 and batch_size=0 used to fall back to the defaults through `or`
    with pytest.raises(ConfigError, match=message):
        RayOptions(**{setting: value})


def test_ray_options_keep_zero_resources() -> None:
    assert RayOptions(cpus_per_actor=0, gpus_per_actor=0.0, num_actors=3).cpus_per_actor == 0


def test_nightly_config_refuses_each_bad_setting_with_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"invalid nightly settings: chunk_rows=0: Input should be greater than "
                                          r"or equal to 1"):
        NightlyConfig(input="a", output="b", chunk_rows=0)
    with pytest.raises(ConfigError, match=r"ray_num_cpus=0: Input should be greater than or equal to 1"):
        NightlyConfig(input="a", output="b", ray_num_cpus=0)
    with pytest.raises(ConfigError, match=r"manifest_dir='': String should have at least 1 character"):
        NightlyConfig(input="a", output="b", manifest_dir="")
    with pytest.raises(ConfigError, match=r"id_col='': String should have at least 1 character"):
        NightlyConfig(input="a", output="b", id_col="")
    with pytest.raises(ConfigError, match=r"output: required"):
        NightlyConfig(input="a")
    with pytest.raises(ConfigError, match=r"chunk_row: not a setting; the settings are input, output, .*chunk_rows"):
        NightlyConfig(input="a", output="b", chunk_row=10)
    with pytest.raises(ConfigError, match=r"classifier: temperature must be a finite number > 0.*got 0"):
        NightlyConfig(input="a", output="b", classifier={"temperature": 0})
    with pytest.raises(ConfigError, match=r"classifier: no setting\(s\) temprature; its settings are .*temperature"):
        NightlyConfig(input="a", output="b", classifier={"temprature": 0.5})
    with pytest.raises(ConfigError, match=r"ray: num_actors must be a whole number ≥ 1"):
        NightlyConfig(input="a", output="b", ray={"num_actors": 0})
    config = NightlyConfig(input="a", output="b/", classifier={"temperature": 0.5, "beam": 1})
    assert config.classifier_config().temperature == 0.5 and config.resolved_manifest_dir == "b_manifests"


def test_nightly_build_names_where_the_bad_setting_came_from(tmp_path: Path) -> None:
    y = tmp_path / "n.yml"
    y.write_text("input: a\noutput: b\nclassifier: {max_prompt_tokens: 0}\n")
    with pytest.raises(ConfigError, match=rf"invalid nightly settings \({y} / command line\): classifier: "
                                          r"max_prompt_tokens must be a whole number ≥ 1"):
        NightlyConfig.build(y)


# --- the nightly sink -----------------------------------------------------------------------------

def test_sink_refuses_a_chunk_with_duplicated_ids(tmp_path: Path) -> None:
    schema = pa.schema([("row_key", pa.string()), ("label", pa.string())])
    sink = DeltaSink(str(tmp_path / "out"), "row_key", schema, run_id="r1")
    sink.ensure_table()
    chunk = pa.table({"row_key": ["a", "a"], "label": ["x", "y"], NEW_ID_COL: [True, True]})
    with pytest.raises(InputSchemaError, match="duplicated 'row_key' values; de-duplicate first"):
        sink.commit(chunk)
    with pytest.raises(InputSchemaError, match="lacks the staged '_soi_new_id' column"):
        sink.commit(chunk.drop_columns([NEW_ID_COL]).slice(0, 1))


# --- the nightly job's exit codes -----------------------------------------------------------------

def _nightly_main():
    spec = importlib.util.spec_from_file_location("nightly_job", REPO / "jobs" / "nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_nightly_job_exits_2_on_bad_settings_and_1_on_another_writer(tmp_path: Path, monkeypatch, capsys) -> None:
    """README: exit 2 means bad config or input (do not retry); another writer is a failed run (exit 1)."""
    main = _nightly_main()
    paths = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*paths, "--chunk-rows", "0"]) == 2
    assert "chunk_rows=0: Input should be greater than or equal to 1" in capsys.readouterr().err

    def another_writer_committed(config: NightlyConfig, **run_options: object) -> None:
        raise ConcurrentWriteError(f"{config.output}: another writer committed to the table")

    monkeypatch.setattr(soi_batch.nightly, "run_nightly", another_writer_committed)
    with pytest.raises(ConcurrentWriteError, match="another writer"):  # uncaught: Python exits 1
        main(paths)
