"""Tests of the metrics gate: the checks and their reasons, the champion pointer, and the
gate's branches through the KFP local runner."""

# No `from __future__ import annotations`: KFP reads the test components' annotations as types.
import json
from pathlib import Path

import pytest
from kfp import dsl, local

from components import gate, storage

MODEL_NAME = "flowers"


def champion_pointer(version: str = "20261204T211500Z-1a2b3c4d", accuracy: float = 0.9) -> dict:
    return {
        "version": version,
        "metrics": {"accuracy": accuracy, "size_bytes": 4096},
        "promoted_at": "2026-12-04T21:15:00+00:00",
        "uri": f"gs://models/{MODEL_NAME}/versions/{version}",
    }


def write_champion(bucket: str, pointer: dict) -> None:
    storage.write_bytes(gate.champion_uri(bucket, MODEL_NAME), json.dumps(pointer).encode("utf-8"))


@pytest.fixture(params=["local", "gcs"])
def bucket(request, tmp_path) -> str:
    """A bucket URI with no objects: a local folder, or a fresh bucket on fake-gcs-server."""
    if request.param == "local":
        return str(tmp_path / "bucket")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/models"


# --- judge: first run, no champion ---


def test_judge_first_run_passes():
    decision = gate.judge(accuracy=0.912, min_accuracy=0.9, max_regression=0.01, champion=None)

    assert decision.passed
    assert decision.champion_version is None
    assert [check.name for check in decision.checks] == [gate.MIN_ACCURACY_CHECK]
    assert decision.checks[0].reason == "accuracy 0.912 >= min_accuracy 0.900"


def test_judge_first_run_fails():
    decision = gate.judge(accuracy=0.85, min_accuracy=0.9, max_regression=0.01, champion=None)

    assert not decision.passed
    assert not decision.checks[0].passed
    assert decision.checks[0].reason == "accuracy 0.850 < min_accuracy 0.900"


def test_judge_min_accuracy_boundary_passes():
    decision = gate.judge(accuracy=0.9, min_accuracy=0.9, max_regression=0.01, champion=None)

    assert decision.passed
    assert decision.checks[0].reason == "accuracy 0.900 >= min_accuracy 0.900"


def test_judge_close_values_get_more_decimals():
    decision = gate.judge(accuracy=0.8996, min_accuracy=0.9, max_regression=0.01, champion=None)

    assert not decision.passed
    assert decision.checks[0].reason == "accuracy 0.8996 < min_accuracy 0.9000"


# --- judge: with a champion ---


def test_judge_within_tolerance_passes():
    champion = champion_pointer(accuracy=0.9)
    decision = gate.judge(accuracy=0.895, min_accuracy=0.8, max_regression=0.01, champion=champion)

    assert decision.passed
    assert decision.champion_version == "20261204T211500Z-1a2b3c4d"
    regression = decision.checks[1]
    assert regression.name == gate.MAX_REGRESSION_CHECK
    assert regression.threshold == 0.89
    assert regression.reason == (
        "accuracy 0.895 >= 0.890 = champion 20261204T211500Z-1a2b3c4d accuracy 0.900 - max_regression 0.010"
    )


def test_judge_beyond_tolerance_fails():
    champion = champion_pointer(accuracy=0.9)
    decision = gate.judge(accuracy=0.88, min_accuracy=0.8, max_regression=0.01, champion=champion)

    assert not decision.passed
    assert decision.checks[0].passed
    assert not decision.checks[1].passed
    assert decision.checks[1].reason == (
        "accuracy 0.880 < 0.890 = champion 20261204T211500Z-1a2b3c4d accuracy 0.900 - max_regression 0.010"
    )


def test_judge_regression_boundary_passes():
    # 0.9 - 0.01 is exactly 0.89 in binary floating point too.
    decision = gate.judge(accuracy=0.89, min_accuracy=0.8, max_regression=0.01, champion=champion_pointer(accuracy=0.9))

    assert decision.passed
    assert decision.checks[1].reason.startswith("accuracy 0.890 >= 0.890 = ")


def test_judge_regression_boundary_absorbs_float_error():
    # 0.55 - 0.1 is 0.45000000000000007 in binary floating point, just above 45/100.
    assert 0.55 - 0.1 > 45 / 100
    decision = gate.judge(accuracy=45 / 100, min_accuracy=0.4, max_regression=0.1, champion=champion_pointer(accuracy=0.55))

    assert decision.passed
    assert decision.checks[1].threshold == 0.45


def test_judge_below_min_with_champion_fails():
    decision = gate.judge(accuracy=0.7, min_accuracy=0.9, max_regression=0.01, champion=champion_pointer(accuracy=0.6))

    assert not decision.passed
    assert not decision.checks[0].passed
    assert decision.checks[1].passed


@pytest.mark.parametrize(
    ("min_accuracy", "max_regression", "message"),
    [
        (1.5, 0.01, r"invalid min_accuracy 1\.5: must be a number in \[0, 1\]"),
        (-0.1, 0.01, r"invalid min_accuracy -0\.1: must be a number in \[0, 1\]"),
        (float("nan"), 0.01, r"invalid min_accuracy nan: must be a number in \[0, 1\]"),
        ("0.9", 0.01, r"invalid min_accuracy '0\.9': must be a number in \[0, 1\]"),
        (0.9, 2.0, r"invalid max_regression 2\.0: must be a number in \[0, 1\], e\.g\. 0\.01"),
        (0.9, -0.01, r"invalid max_regression -0\.01: must be a number in \[0, 1\]"),
    ],
    ids=["min-above-one", "min-negative", "min-nan", "min-string", "regression-above-one", "regression-negative"],
)
def test_judge_invalid_threshold_raises(min_accuracy, max_regression, message):
    with pytest.raises(ValueError, match=message):
        gate.judge(accuracy=0.9, min_accuracy=min_accuracy, max_regression=max_regression, champion=None)


def test_judge_invalid_accuracy_raises():
    with pytest.raises(ValueError, match=r"invalid accuracy 1\.2: must be a number in \[0, 1\]"):
        gate.judge(accuracy=1.2, min_accuracy=0.9, max_regression=0.01, champion=None)


def test_judge_champion_without_accuracy_raises():
    with pytest.raises(ValueError, match=r"invalid champion pointer .*'metrics\.accuracy'"):
        gate.judge(accuracy=0.9, min_accuracy=0.9, max_regression=0.01, champion={"version": "v1", "metrics": {}})


# --- the champion pointer and decision.json ---


def test_read_champion_absent_returns_none(bucket):
    assert gate.read_champion(bucket, MODEL_NAME) is None
    assert gate.read_champion_with_generation(bucket, MODEL_NAME) == (None, 0)


def test_read_champion_present_returns_pointer(bucket):
    pointer = champion_pointer()
    write_champion(bucket, pointer)

    champion, generation = gate.read_champion_with_generation(bucket, MODEL_NAME)

    assert champion == pointer
    assert generation != 0


def test_read_champion_invalid_json_raises(bucket):
    storage.write_bytes(gate.champion_uri(bucket, MODEL_NAME), b"{not json")

    with pytest.raises(ValueError, match=r"champion pointer .*champion\.json is not valid JSON"):
        gate.read_champion(bucket, MODEL_NAME)


def test_read_champion_json_list_raises(bucket):
    storage.write_bytes(gate.champion_uri(bucket, MODEL_NAME), b"[1, 2]")

    with pytest.raises(ValueError, match=r"champion pointer .*champion\.json is not a JSON object: restore it"):
        gate.read_champion(bucket, MODEL_NAME)


def test_run_gate_writes_decision(bucket, tmp_path):
    write_champion(bucket, champion_pointer(accuracy=0.9))
    decision_dir = tmp_path / "decision"

    decision = gate.run_gate(
        accuracy=0.88,
        min_accuracy=0.8,
        max_regression=0.01,
        bucket=bucket,
        model_name=MODEL_NAME,
        decision_dir=decision_dir,
    )

    assert not decision.passed
    assert gate.read_decision(decision_dir) == decision
    stored = json.loads((decision_dir / gate.DECISION_FILE).read_text(encoding="utf-8"))
    assert stored["champion_version"] == "20261204T211500Z-1a2b3c4d"
    assert stored["checks"][1]["reason"].startswith("accuracy 0.880 < 0.890 = champion ")


def test_run_gate_invalid_threshold_writes_nothing(tmp_path):
    decision_dir = tmp_path / "decision"

    with pytest.raises(ValueError, match=r"invalid max_regression 1\.5"):
        gate.run_gate(
            accuracy=0.9,
            min_accuracy=0.9,
            max_regression=1.5,
            bucket=str(tmp_path / "bucket"),
            model_name=MODEL_NAME,
            decision_dir=decision_dir,
        )
    assert not decision_dir.exists()


@pytest.mark.parametrize("model_name", ["", "a/b", "../up", "-leading-dash"])
def test_run_gate_invalid_model_name_raises(model_name, tmp_path):
    with pytest.raises(ValueError, match=r"invalid model_name .*: use 1 to 128 letters"):
        gate.run_gate(
            accuracy=0.9,
            min_accuracy=0.9,
            max_regression=0.01,
            bucket=str(tmp_path / "bucket"),
            model_name=model_name,
            decision_dir=tmp_path / "decision",
        )


def test_read_decision_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"decision\.json not found: .* is not a decision written by the gate"):
        gate.read_decision(tmp_path)


# --- the gate's branches through the KFP local runner ---
#
# kfp's local runner evaluates a condition by substituting parameter values into the compiled
# CEL expression and running Python's eval() on the result. When that raises, it logs a warning
# and treats the condition as False (kfp 2.17.3 still does), so a substitution bug skips the
# dsl.If body without an error. Upstream's fix "feat(sdk/local): fix dsl.Condition, propagate
# skips" describes such a bug: the quoted parameter key was mangled, and every If took the false
# branch. These tests check that a passing gate runs the If branch and not the Else branch, and
# that a failing gate runs the Else branch and not the If branch.

gate_op = dsl.component(gate.gate_component, base_image="python:3.11", install_kfp_package=False)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def record_branch(branch: str, marker_dir: str) -> str:
    """Create the file marker_dir/branch as a record of which branch ran."""
    import pathlib

    pathlib.Path(marker_dir).mkdir(parents=True, exist_ok=True)
    pathlib.Path(marker_dir, branch).write_text(branch, encoding="utf-8")
    return branch


@dsl.pipeline(name="gate-branches")
def gate_branches(accuracy: float, bucket: str, marker_dir: str) -> str:
    judged = gate_op(
        accuracy=accuracy, min_accuracy=0.9, max_regression=0.01, bucket=bucket, model_name=MODEL_NAME
    )
    judged.set_caching_options(False)
    with dsl.If(judged.outputs["passed"] == True):  # noqa: E712 (KFP condition syntax)
        promoted = record_branch(branch="passed", marker_dir=marker_dir)
        promoted.set_caching_options(False)
    with dsl.Else():
        rejected = record_branch(branch="failed", marker_dir=marker_dir)
        rejected.set_caching_options(False)
    return dsl.OneOf(promoted.output, rejected.output)


@pytest.fixture
def local_runner(tmp_path) -> Path:
    pipeline_root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    return pipeline_root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("accuracy", "expected_branch", "skipped_branch"),
    [(0.95, "passed", "failed"), (0.85, "failed", "passed")],
    ids=["passing", "failing"],
)
def test_gate_component_takes_right_branch(local_runner, tmp_path, accuracy, expected_branch, skipped_branch):
    bucket = tmp_path / "bucket"
    write_champion(str(bucket), champion_pointer(accuracy=0.9))
    marker_dir = tmp_path / "markers"

    run = gate_branches(accuracy=accuracy, bucket=str(bucket), marker_dir=str(marker_dir))

    assert run.output == expected_branch
    assert (marker_dir / expected_branch).is_file()
    assert not (marker_dir / skipped_branch).exists()
    decision_files = list(local_runner.rglob(gate.DECISION_FILE))
    assert len(decision_files) == 1
    assert json.loads(decision_files[0].read_text(encoding="utf-8"))["passed"] == (expected_branch == "passed")
