"""The metrics gate: decide whether an exported model may replace the bucket's champion.

A model passes when its accuracy is at least min_accuracy and, when the bucket already has a
champion for the model name, at least the champion's accuracy minus max_regression. A first
run has no champion and is judged on min_accuracy alone. Both comparisons use >=.

Champion pointer, a JSON object at {bucket}/{model_name}/champion.json (written by promote):
    version        the version that apps download, e.g. "20261204T211500Z-1a2b3c4d"
    metrics        metrics of that version's .tflite; "accuracy" is the one the gate compares
    promoted_at    UTC time of the promotion, ISO 8601
    uri            the version's folder, {bucket}/{model_name}/versions/{version}

Decision artifact (written by gate_component), a folder:
    decision.json  a Decision as JSON: passed, the accuracy judged, every check with its
                   reason, and the champion's version (null on a first run)
"""

# No `from __future__ import annotations` here: KFP reads gate_component's annotations as
# types, and string annotations would break the component's interface.
import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import NamedTuple

from kfp.dsl import Artifact, Input, Output

from components import storage

logger = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"
DECISION_FILE = "decision.json"

MIN_ACCURACY_CHECK = "min_accuracy"
MAX_REGRESSION_CHECK = "max_regression"

# Accuracies are ratios of image counts, so two real results differ by far more than 1e-9.
# Rounding the regression threshold to 9 decimal places removes the float error of the
# subtraction (0.3 - 0.1 is 0.19999999999999998), so an accuracy exactly at the boundary passes.
_THRESHOLD_DECIMALS = 9

# A model name is one path segment of the bucket layout and part of every object name.
_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclasses.dataclass(frozen=True)
class Check:
    """One comparison of the gate and its outcome."""

    name: str  # MIN_ACCURACY_CHECK or MAX_REGRESSION_CHECK
    value: float  # the candidate's accuracy
    threshold: float  # the lowest accuracy that passes this check
    passed: bool
    reason: str  # e.g. "accuracy 0.912 >= min_accuracy 0.900"


@dataclasses.dataclass(frozen=True)
class Decision:
    """The gate's verdict on one exported model."""

    passed: bool
    accuracy: float
    checks: list[Check]
    champion_version: str | None = None  # None when the bucket had no champion


def validate_thresholds(*, min_accuracy: float, max_regression: float) -> None:
    """Raise ValueError unless both thresholds are numbers in [0, 1]."""
    _validate_fraction("min_accuracy", min_accuracy, example="0.9 for 90% of test images")
    _validate_fraction("max_regression", max_regression, example="0.01 to allow one point less")


def validate_model_name(model_name: str) -> None:
    """Raise ValueError unless model_name is usable as one folder name in the bucket."""
    if not isinstance(model_name, str) or not _MODEL_NAME_PATTERN.fullmatch(model_name):
        raise ValueError(
            f"invalid model_name {model_name!r}: use 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, e.g. 'flower-classifier'"
        )


def _validate_fraction(name: str, value: float, *, example: str) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"invalid {name} {value!r}: must be a number in [0, 1], e.g. {example}")


def champion_uri(bucket: str, model_name: str) -> str:
    """Return the URI of the champion pointer of model_name in bucket."""
    return storage.join(bucket, model_name, CHAMPION_FILE)


def read_champion_with_generation(bucket: str, model_name: str) -> tuple[dict | None, int]:
    """Read the champion pointer and its generation; (None, 0) when there is no champion.

    Generation 0 is what storage.write_bytes takes as if_generation_match for "only if absent".
    """
    uri = champion_uri(bucket, model_name)
    try:
        data, generation = storage.read_with_generation(uri)
    except storage.ObjectNotFoundError:
        return None, 0

    restore_hint = (
        "restore it from the newest complete version (one with metrics.json) under "
        f"{storage.join(bucket, model_name, 'versions')}"
    )
    try:
        champion = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"champion pointer {uri} is not valid JSON ({error}): {restore_hint}") from error
    if not isinstance(champion, dict):
        raise ValueError(f"champion pointer {uri} is not a JSON object: {restore_hint}")
    return champion, generation


def read_champion(bucket: str, model_name: str) -> dict | None:
    """Read the champion pointer of model_name in bucket; None when there is none yet."""
    champion, _ = read_champion_with_generation(bucket, model_name)
    return champion


def judge(
    *,
    accuracy: float,
    min_accuracy: float,
    max_regression: float = 0.01,
    champion: dict | None,
) -> Decision:
    """Judge a model's accuracy against the absolute threshold and the champion, if any."""
    validate_thresholds(min_accuracy=min_accuracy, max_regression=max_regression)
    _validate_fraction("accuracy", accuracy, example="the exported model's test accuracy")

    checks = [_check_min_accuracy(accuracy, min_accuracy)]
    champion_version = None
    if champion is not None:
        champion_version, champion_accuracy = _champion_accuracy(champion)
        checks.append(
            _check_regression(
                accuracy,
                champion_accuracy=champion_accuracy,
                champion_version=champion_version,
                max_regression=max_regression,
            )
        )

    return Decision(
        passed=all(check.passed for check in checks),
        accuracy=accuracy,
        checks=checks,
        champion_version=champion_version,
    )


def _champion_accuracy(champion: dict) -> tuple[str, float]:
    version = champion.get("version")
    metrics = champion.get("metrics")
    accuracy = metrics.get("accuracy") if isinstance(metrics, dict) else None
    if not isinstance(version, str) or not isinstance(accuracy, (int, float)):
        raise ValueError(
            f"invalid champion pointer {champion!r}: it needs a string 'version' and a number "
            "'metrics.accuracy'; restore it from the newest complete version in the bucket"
        )
    return version, float(accuracy)


def _check_min_accuracy(accuracy: float, min_accuracy: float) -> Check:
    passed = accuracy >= min_accuracy
    value_text, threshold_text = _format_pair(accuracy, min_accuracy)
    operator = ">=" if passed else "<"
    return Check(
        name=MIN_ACCURACY_CHECK,
        value=accuracy,
        threshold=min_accuracy,
        passed=passed,
        reason=f"accuracy {value_text} {operator} min_accuracy {threshold_text}",
    )


def _check_regression(
    accuracy: float, *, champion_accuracy: float, champion_version: str, max_regression: float
) -> Check:
    threshold = round(champion_accuracy - max_regression, _THRESHOLD_DECIMALS)
    passed = accuracy >= threshold
    value_text, threshold_text = _format_pair(accuracy, threshold)
    operator = ">=" if passed else "<"
    return Check(
        name=MAX_REGRESSION_CHECK,
        value=accuracy,
        threshold=threshold,
        passed=passed,
        reason=(
            f"accuracy {value_text} {operator} {threshold_text} = champion {champion_version} "
            f"accuracy {champion_accuracy:.3f} - max_regression {max_regression:.3f}"
        ),
    )


def _format_pair(value: float, threshold: float) -> tuple[str, str]:
    """Format both numbers with 3 decimals, or with more where 3 would make them look equal."""
    for decimals in range(3, 13):
        value_text = f"{value:.{decimals}f}"
        threshold_text = f"{threshold:.{decimals}f}"
        if value == threshold or value_text != threshold_text:
            return value_text, threshold_text
    return repr(value), repr(threshold)


def write_decision(decision: Decision, decision_dir: str | Path) -> Path:
    """Write decision.json into decision_dir, creating the folder; returns the file's path."""
    folder = Path(decision_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DECISION_FILE
    path.write_text(json.dumps(dataclasses.asdict(decision), indent=2), encoding="utf-8")
    return path


def read_decision(decision_dir: str | Path) -> Decision:
    """Read the Decision that write_decision stored in decision_dir."""
    path = Path(decision_dir) / DECISION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {decision_dir} is not a decision written by the gate")
    fields = json.loads(path.read_text(encoding="utf-8"))
    fields["checks"] = [Check(**check) for check in fields["checks"]]
    return Decision(**fields)


def run_gate(
    *,
    accuracy: float,
    min_accuracy: float,
    max_regression: float,
    bucket: str,
    model_name: str,
    decision_dir: str | Path,
) -> Decision:
    """Judge accuracy against the bucket's current champion and write decision.json."""
    validate_thresholds(min_accuracy=min_accuracy, max_regression=max_regression)
    validate_model_name(model_name)

    champion = read_champion(bucket, model_name)
    decision = judge(
        accuracy=accuracy,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        champion=champion,
    )
    path = write_decision(decision, decision_dir)
    for check in decision.checks:
        logger.info("gate check %s: %s", check.name, check.reason)
    logger.info("gate %s; decision written to %s", "passed" if decision.passed else "failed", path)
    return decision


def gate_component(
    accuracy: float,
    min_accuracy: float,
    max_regression: float,
    bucket: str,
    model_name: str,
    decision: Output[Artifact],
) -> NamedTuple("GateOutputs", [("passed", bool)]):
    """Judge the exported model's accuracy against min_accuracy and the bucket's champion."""
    import logging
    from collections import namedtuple

    from components import gate as step

    logging.basicConfig(level=logging.INFO)
    result = step.run_gate(
        accuracy=accuracy,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        bucket=bucket,
        model_name=model_name,
        decision_dir=decision.path,
    )

    decision.metadata["passed"] = result.passed
    decision.metadata["accuracy"] = result.accuracy
    decision.metadata["champion_version"] = result.champion_version or ""
    decision.metadata["reasons"] = [check.reason for check in result.checks]
    logging.getLogger("gate_component").info(
        "gate passed=%s accuracy=%.4f champion=%s", result.passed, accuracy, result.champion_version
    )
    GateOutputs = namedtuple("GateOutputs", ["passed"])
    return GateOutputs(passed=result.passed)


def rejection_component(decision: Input[Artifact], model_name: str):
    """Log why the gate kept the exported model from being promoted (the pipeline's Else branch)."""
    import logging

    from components import gate as step

    result = step.read_decision(decision.path)
    failed = [check.reason for check in result.checks if not check.passed]
    logging.getLogger("rejection_component").info(
        "%s not promoted: %s; the champion stays %s",
        model_name, "; ".join(failed), result.champion_version or "unset",
    )
