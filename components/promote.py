"""Promotion: upload an exported model as a new version, then point the champion at it.

Bucket layout, under a gs:// prefix or a local folder (see docs/promotion.md):
    {bucket}/{model_name}/versions/{version}/labels.txt
    {bucket}/{model_name}/versions/{version}/model_card.md
    {bucket}/{model_name}/versions/{version}/model.tflite
    {bucket}/{model_name}/versions/{version}/metrics.json   written last: a version is complete
                                                            only when its metrics.json exists
    {bucket}/{model_name}/champion.json                     the pointer (see components.gate)

Every version file is written only if absent, so a version is never overwritten. The pointer is
written only if its generation is still the one that was read, so two runs promoting at the same
time cannot lose an update. The run whose write fails re-reads the pointer and re-judges its
model against the new champion. It then retries, or stops and leaves the pointer to the other run.
"""

# No `from __future__ import annotations` here: KFP reads promote_component's annotations as
# types, and string annotations would break the component's interface.
import dataclasses
import datetime
import json
import logging
import math
import re
from pathlib import Path
from typing import Callable, NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model

from components import artifacts, gate, storage
from components.artifacts import LABELS_FILE
from components.model_card import ModelCardInputs, package_versions, render_model_card

logger = logging.getLogger(__name__)

# Files of the export step's folder that promote reads.
TFLITE_FILE = artifacts.TFLITE_MODEL_FILE
EXPORT_INFO_FILE = artifacts.EXPORT_INFO_FILE

VERSIONS_DIR = "versions"
METRICS_FILE = "metrics.json"
MODEL_CARD_FILE = "model_card.md"

DEFAULT_MAX_ATTEMPTS = 5

# A version is one path segment, e.g. "20261204T211500Z-1a2b3c4d" from the export step.
_VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The accuracy in the export metrics and the one the gate judged both pass through JSON, which
# keeps a float64 exactly. The tolerance absorbs a float32 round trip and nothing larger.
_ACCURACY_TOLERANCE = 1e-6


class PromotionError(RuntimeError):
    """Promotion stopped before the champion pointer could be moved."""


class VersionExistsError(PromotionError):
    """The version's folder already has files, and a version is never overwritten."""


@dataclasses.dataclass(frozen=True)
class PromotionHooks:
    """Callbacks at fixed points of promote, for tests that inject failures or races.

    after_version_upload(version_uri) runs once every file of the version is uploaded and
    before the pointer is read. after_champion_read(attempt, champion) runs after each read
    of the pointer (attempt counts from 1; champion is None when there is none) and before
    the candidate is re-judged and the pointer written. An exception from either stops promote.
    """

    after_version_upload: Callable[[str], None] | None = None
    after_champion_read: Callable[[int, dict | None], None] | None = None


@dataclasses.dataclass(frozen=True)
class PromotionResult:
    """The outcome of one promotion."""

    version: str
    version_uri: str
    became_champion: bool
    champion_version: str | None  # the version the pointer names when promote returned
    attempts: int  # pointer writes tried, including the successful one
    reason: str


def validate_version(version: str) -> None:
    """Raise ValueError unless version is usable as one folder name in the bucket."""
    if not isinstance(version, str) or not _VERSION_PATTERN.fullmatch(version):
        raise ValueError(
            f"invalid version {version!r} in {EXPORT_INFO_FILE}: use 1 to 128 letters, digits, "
            "'.', '_' or '-', e.g. '20261204T211500Z-1a2b3c4d'; re-run the export step"
        )


def version_uri(bucket: str, model_name: str, version: str) -> str:
    """Return the folder URI of one version of model_name in bucket."""
    return storage.join(bucket, model_name, VERSIONS_DIR, version)


def read_export_info(exported_dir: str | Path) -> dict:
    """Read export_info.json of the export step's folder and check its version."""
    folder = Path(exported_dir)
    for name in (TFLITE_FILE, LABELS_FILE, EXPORT_INFO_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found: pass the folder written by the export step, "
                f"which has {TFLITE_FILE}, {LABELS_FILE} and {EXPORT_INFO_FILE}"
            )
    export_info = json.loads((folder / EXPORT_INFO_FILE).read_text(encoding="utf-8"))
    validate_version(export_info.get("version"))
    return export_info


def promote(
    *,
    bucket: str,
    model_name: str,
    exported_dir: str | Path,
    export_metrics: dict,
    decision: gate.Decision,
    card: ModelCardInputs,
    min_accuracy: float,
    max_regression: float,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    hooks: PromotionHooks | None = None,
) -> PromotionResult:
    """Upload the exported model as a new version, then make it the champion if it still passes.

    Raises ValueError on invalid arguments or a failed decision, FileNotFoundError when the
    export folder lacks a file, VersionExistsError when the version already has files in the
    bucket, and PromotionError when other runs kept moving the pointer for max_attempts
    attempts. A rejection by the re-judged gate is no error: the result then has
    became_champion=False and the reason.
    """
    hooks = hooks or PromotionHooks()
    _validate_promotion(
        model_name=model_name,
        export_metrics=export_metrics,
        decision=decision,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        max_attempts=max_attempts,
    )
    export_info = read_export_info(exported_dir)
    version = export_info["version"]
    target_uri = version_uri(bucket, model_name, version)

    card_text = render_model_card(
        model_name=model_name,
        version=version,
        version_uri=target_uri,
        card=card,
        export_info=export_info,
        export_metrics=export_metrics,
        decision=decision,
        packages=package_versions(),
    )
    metrics = {
        "exported_model": export_metrics,
        "evaluation": card.evaluation_metrics,
        "export_info": export_info,
        "decision": dataclasses.asdict(decision),
    }
    upload_version(target_uri, exported_dir=exported_dir, card_text=card_text, metrics=metrics)
    if hooks.after_version_upload is not None:
        hooks.after_version_upload(target_uri)

    return update_champion(
        bucket=bucket,
        model_name=model_name,
        version=version,
        metrics=export_metrics,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        max_attempts=max_attempts,
        hooks=hooks,
    )


def _validate_promotion(
    *,
    model_name: str,
    export_metrics: dict,
    decision: gate.Decision,
    min_accuracy: float,
    max_regression: float,
    max_attempts: int,
) -> None:
    """Raise ValueError for an argument that promote cannot use, before any upload."""
    gate.validate_thresholds(min_accuracy=min_accuracy, max_regression=max_regression)
    gate.validate_model_name(model_name)
    _validate_max_attempts(max_attempts)

    # Defence in depth: the pipeline runs promote only under dsl.If(passed), but a wiring
    # mistake must not publish a model that failed the gate.
    if not decision.passed:
        reasons = "; ".join(check.reason for check in decision.checks if not check.passed)
        raise ValueError(f"the gate rejected this model ({reasons}): promote runs only after a passed gate")

    accuracy = export_metrics.get("accuracy")
    if not isinstance(accuracy, (int, float)):
        raise ValueError(
            f"export metrics have no numeric 'accuracy' ({export_metrics!r}): pass the Metrics "
            "artifact of the export step"
        )
    if not math.isclose(accuracy, decision.accuracy, rel_tol=0.0, abs_tol=_ACCURACY_TOLERANCE):
        raise ValueError(
            f"export accuracy {accuracy!r} differs from the accuracy {decision.accuracy!r} that the "
            "gate judged: pass the gate the same export step's accuracy output"
        )


def _validate_max_attempts(max_attempts: int) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"invalid max_attempts {max_attempts!r}: must be an integer >= 1, e.g. 5")


def upload_version(
    target_uri: str, *, exported_dir: str | Path, card_text: str, metrics: dict
) -> None:
    """Upload one version's files, each only if absent, with metrics.json last.

    Raises VersionExistsError on the first file that already exists, so an existing version
    is left as it was.
    """
    folder = Path(exported_dir)
    metrics_text = json.dumps(metrics, indent=2, sort_keys=True)
    sources: list[tuple[str, Path | bytes]] = [
        (LABELS_FILE, folder / LABELS_FILE),
        (MODEL_CARD_FILE, card_text.encode("utf-8")),
        (TFLITE_FILE, folder / TFLITE_FILE),
        # Written last: readers take a version as complete only when its metrics.json exists.
        (METRICS_FILE, metrics_text.encode("utf-8")),
    ]
    for name, source in sources:
        uri = storage.join(target_uri, name)
        try:
            if isinstance(source, Path):
                storage.upload_file(source, uri, if_generation_match=0)
            else:
                storage.write_bytes(uri, source, if_generation_match=0)
        except storage.PreconditionFailedError as error:
            raise _version_exists_error(target_uri, existing_file=name) from error
        logger.info("uploaded %s", uri)


def _version_exists_error(target_uri: str, *, existing_file: str) -> VersionExistsError:
    if existing_file != LABELS_FILE:
        return VersionExistsError(
            f"{storage.join(target_uri, existing_file)} appeared while this run uploaded the same "
            "version: another run is promoting it too; let that run finish"
        )
    if storage.exists(storage.join(target_uri, METRICS_FILE)):
        return VersionExistsError(
            f"version {target_uri} already exists and a version is never overwritten: export the "
            "model again to get a new version"
        )
    return VersionExistsError(
        f"version {target_uri} exists but is incomplete (no {METRICS_FILE}): an earlier promotion "
        "failed part-way or is still running; delete that folder once no run writes to it, "
        "then promote again"
    )


def update_champion(
    *,
    bucket: str,
    model_name: str,
    version: str,
    metrics: dict,
    min_accuracy: float,
    max_regression: float,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    hooks: PromotionHooks | None = None,
) -> PromotionResult:
    """Point the champion at an uploaded version if it passes against the current champion.

    Each attempt reads the pointer with its generation, re-judges metrics["accuracy"] against
    it and writes the pointer only if the generation is unchanged (0: only if absent). A write
    that loses to another run starts the next attempt.
    """
    gate.validate_model_name(model_name)
    validate_version(version)
    _validate_max_attempts(max_attempts)
    hooks = hooks or PromotionHooks()
    target_uri = version_uri(bucket, model_name, version)
    pointer_uri = gate.champion_uri(bucket, model_name)
    lost_a_write = False

    for attempt in range(1, max_attempts + 1):
        champion, generation = gate.read_champion_with_generation(bucket, model_name)
        if hooks.after_champion_read is not None:
            hooks.after_champion_read(attempt, champion)

        decision = gate.judge(
            accuracy=metrics["accuracy"],
            min_accuracy=min_accuracy,
            max_regression=max_regression,
            champion=champion,
        )
        if not decision.passed:
            return _rejected(version, target_uri, decision=decision, attempt=attempt, lost_a_write=lost_a_write)

        pointer = {
            "version": version,
            "metrics": metrics,
            "promoted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "uri": target_uri,
            "previous_version": decision.champion_version,
        }
        if _write_pointer(pointer_uri, pointer, generation=generation, attempt=attempt):
            return _promoted(version, target_uri, decision=decision, attempt=attempt, pointer_uri=pointer_uri)
        lost_a_write = True

    raise PromotionError(
        f"champion pointer {pointer_uri} changed before each of {max_attempts} writes (other runs "
        f"kept promoting); version {version} is complete at {target_uri} but is not champion. Call "
        "components.promote.update_champion for it again, or pass a larger max_attempts"
    )


def _write_pointer(pointer_uri: str, pointer: dict, *, generation: int, attempt: int) -> bool:
    """Write the pointer if its generation is still the one read; returns False if it changed."""
    data = json.dumps(pointer, indent=2, sort_keys=True).encode("utf-8")
    try:
        storage.write_bytes(pointer_uri, data, if_generation_match=generation)
    except storage.PreconditionFailedError:
        logger.warning(
            "champion pointer %s changed after attempt %d read it (it named %s then); re-reading",
            pointer_uri, attempt, pointer["previous_version"] or "no version",
        )
        return False
    return True


def _promoted(
    version: str, target_uri: str, *, decision: gate.Decision, attempt: int, pointer_uri: str
) -> PromotionResult:
    previous = decision.champion_version or "no champion"
    reason = f"version {version} replaced {previous} as champion: " + "; ".join(
        check.reason for check in decision.checks
    )
    if attempt > 1:
        reason += f" (after {attempt} attempts, because other runs moved the pointer)"
    logger.info("promoted %s: %s now names %s", target_uri, pointer_uri, version)
    return PromotionResult(
        version=version,
        version_uri=target_uri,
        became_champion=True,
        champion_version=version,
        attempts=attempt,
        reason=reason,
    )


def _rejected(
    version: str, target_uri: str, *, decision: gate.Decision, attempt: int, lost_a_write: bool
) -> PromotionResult:
    failed = "; ".join(check.reason for check in decision.checks if not check.passed)
    winner = decision.champion_version
    if winner is None:
        cause = "it fails the thresholds given to promote"
    elif lost_a_write:
        cause = f"version {winner} won the race for the champion pointer, and this version fails against it"
    else:
        cause = f"the champion is now {winner}, and this version fails against it"
    reason = (
        f"version {version} was not promoted: {cause} ({failed}). Its files stay at "
        f"{target_uri}; the pointer still names {winner or 'no version'}"
    )
    logger.warning("%s", reason)
    return PromotionResult(
        version=version,
        version_uri=target_uri,
        became_champion=False,
        champion_version=winner,
        attempts=attempt,
        reason=reason,
    )


def promote_component(
    tflite_model: Input[Model],
    export_metrics: Input[Metrics],
    decision: Input[Artifact],
    images: Input[Dataset],
    model: Input[Model],
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    test_data: Input[Dataset],
    evaluation_metrics: Input[Metrics],
    bucket: str,
    model_name: str,
    min_accuracy: float,
    max_regression: float,
) -> NamedTuple("PromoteOutputs", [("version", str), ("version_uri", str)]):
    """Upload the exported model as a new version and move the champion pointer to it."""
    import logging
    from collections import namedtuple

    from components import gate
    from components import promote as step
    from components.model_card import read_card_inputs

    logging.basicConfig(level=logging.INFO)
    card = read_card_inputs(
        images_dir=images.path,
        model_dir=model.path,
        split_dirs={"train": train_data.path, "validation": validation_data.path, "test": test_data.path},
        evaluation_metrics=dict(evaluation_metrics.metadata),
    )
    result = step.promote(
        bucket=bucket,
        model_name=model_name,
        exported_dir=tflite_model.path,
        export_metrics=dict(export_metrics.metadata),
        decision=gate.read_decision(decision.path),
        card=card,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
    )

    logging.getLogger("promote_component").info(
        "promote version=%s became_champion=%s champion=%s: %s",
        result.version, result.became_champion, result.champion_version, result.reason,
    )
    PromoteOutputs = namedtuple("PromoteOutputs", ["version", "version_uri"])
    return PromoteOutputs(version=result.version, version_uri=result.version_uri)
