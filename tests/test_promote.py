"""Tests of the promotion to a bucket: the version files, the model card, versions that are
never overwritten, a failure before the pointer moves, and two runs promoting at once.

Most tests run against both a local folder and fake-gcs-server. Tests of argument checks, of the
card's package list and of the KFP local runner use a local folder only. The .tflite is a few
fake bytes, because promotion copies the model and never parses it.
"""

# No `from __future__ import annotations`: KFP reads the test pipeline's annotations as types.
import dataclasses
import functools
import importlib.metadata
import json
import multiprocessing
from pathlib import Path

import pytest
from kfp import dsl, local

from components import gate, model_card, promote, storage
from components.artifacts import LABELS_FILE, ModelInfo

MODEL_NAME = "flowers"
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SOURCE_URI = "gs://download.tensorflow.org/example_images/flower_photos.tgz"
SOURCE_SHA256 = "4c" * 32
BACKBONE_URI = "https://tfhub.dev/tensorflow/efficientnet/lite0/feature-vector/2"
MIN_ACCURACY = 0.5
MAX_REGRESSION = 0.01
# Seconds that a process of the race tests waits for the other before it gives up.
SYNC_TIMEOUT_S = 60


@pytest.fixture(params=["local", "gcs"])
def bucket(request, tmp_path) -> str:
    """A bucket URI with no objects: a local folder, or a fresh bucket on fake-gcs-server."""
    if request.param == "local":
        return str(tmp_path / "bucket")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/models"


def make_export(folder: Path, *, version: str) -> Path:
    """Write a folder in the export step's layout with a fake .tflite."""
    folder.mkdir(parents=True)
    (folder / promote.TFLITE_FILE).write_bytes(b"TFL3 fake model " + version.encode("ascii"))
    (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    export_info = {"quantization": "int8", "version": version, "size_bytes": 24, "sha256": "ab" * 32}
    (folder / promote.EXPORT_INFO_FILE).write_text(json.dumps(export_info), encoding="utf-8")
    return folder


def make_card() -> model_card.ModelCardInputs:
    class_counts = {label: 20 for label in LABELS}
    splits = {
        name: {
            "split": name,
            "fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
            "seed": 7,
            "class_counts": {label: count for label in LABELS},
        }
        for name, count in (("train", 16), ("validation", 2), ("test", 2))
    }
    return model_card.ModelCardInputs(
        ingest_report={
            "source_uri": SOURCE_URI,
            "source_kind": "tar",
            "source_sha256": SOURCE_SHA256,
            "class_counts": class_counts,
        },
        splits=splits,
        model_info=ModelInfo(
            model_spec="efficientnet_lite0",
            backbone_uri=BACKBONE_URI,
            input_height=224,
            input_width=224,
            hyperparameters={"epochs": 5, "batch_size": 32, "learning_rate": 0.005},
            num_train_images=80,
            num_validation_images=10,
        ),
        evaluation_metrics={"accuracy": 0.93, "loss": 0.41, "top_2_accuracy": 0.98, "f1_roses": 0.9},
    )


def export_metrics(accuracy: float) -> dict:
    return {"accuracy": accuracy, "size_bytes": 24, "mean_latency_ms": 3.5, "num_test_images": 10}


def passed_decision(bucket: str, accuracy: float) -> gate.Decision:
    """Judge accuracy against the bucket's current champion, as the gate step would."""
    decision = gate.judge(
        accuracy=accuracy,
        min_accuracy=MIN_ACCURACY,
        max_regression=MAX_REGRESSION,
        champion=gate.read_champion(bucket, MODEL_NAME),
    )
    assert decision.passed, decision
    return decision


def run_promote(
    bucket: str,
    exported_dir: Path,
    *,
    accuracy: float,
    decision: gate.Decision | None = None,
    hooks: promote.PromotionHooks | None = None,
    max_attempts: int = promote.DEFAULT_MAX_ATTEMPTS,
) -> promote.PromotionResult:
    return promote.promote(
        bucket=bucket,
        model_name=MODEL_NAME,
        exported_dir=exported_dir,
        export_metrics=export_metrics(accuracy),
        decision=decision or passed_decision(bucket, accuracy),
        card=make_card(),
        min_accuracy=MIN_ACCURACY,
        max_regression=MAX_REGRESSION,
        max_attempts=max_attempts,
        hooks=hooks,
    )


def version_file(bucket: str, version: str, name: str) -> str:
    return storage.join(promote.version_uri(bucket, MODEL_NAME, version), name)


def pointer_version(bucket: str) -> str | None:
    champion = gate.read_champion(bucket, MODEL_NAME)
    return champion["version"] if champion else None


# --- one promotion ---


def test_promote_first_version_uploads_files(bucket, tmp_path):
    exported = make_export(tmp_path / "v1", version="20261204T211500Z-11111111")

    result = run_promote(bucket, exported, accuracy=0.9)

    expected_uri = storage.join(bucket, MODEL_NAME, "versions", "20261204T211500Z-11111111")
    assert result == promote.PromotionResult(
        version="20261204T211500Z-11111111",
        version_uri=expected_uri,
        became_champion=True,
        champion_version="20261204T211500Z-11111111",
        attempts=1,
        reason=(
            "version 20261204T211500Z-11111111 replaced no champion as champion: "
            "accuracy 0.900 >= min_accuracy 0.500"
        ),
    )
    tflite = storage.read_bytes(version_file(bucket, result.version, promote.TFLITE_FILE))
    assert tflite == (exported / promote.TFLITE_FILE).read_bytes()
    labels = storage.read_text(version_file(bucket, result.version, LABELS_FILE))
    assert labels.splitlines() == LABELS
    metrics = json.loads(storage.read_text(version_file(bucket, result.version, promote.METRICS_FILE)))
    assert metrics["exported_model"] == export_metrics(0.9)
    assert metrics["evaluation"]["top_2_accuracy"] == 0.98
    assert metrics["decision"]["passed"] is True
    assert storage.exists(version_file(bucket, result.version, promote.MODEL_CARD_FILE))


def test_promote_first_version_writes_pointer(bucket, tmp_path):
    exported = make_export(tmp_path / "v1", version="20261204T211500Z-11111111")

    result = run_promote(bucket, exported, accuracy=0.9)

    pointer = gate.read_champion(bucket, MODEL_NAME)
    assert pointer["version"] == result.version
    assert pointer["uri"] == result.version_uri
    assert pointer["metrics"] == export_metrics(0.9)
    assert pointer["previous_version"] is None
    assert pointer["promoted_at"].endswith("+00:00")


def test_promote_better_version_replaces_champion(bucket, tmp_path):
    run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.8)

    result = run_promote(bucket, make_export(tmp_path / "v2", version="v2"), accuracy=0.85)

    assert result.became_champion
    assert result.reason == (
        "version v2 replaced v1 as champion: accuracy 0.850 >= min_accuracy 0.500; "
        "accuracy 0.850 >= 0.790 = champion v1 accuracy 0.800 - max_regression 0.010"
    )
    assert gate.read_champion(bucket, MODEL_NAME)["previous_version"] == "v1"


def test_model_card_has_sections(bucket, tmp_path):
    exported = make_export(tmp_path / "v1", version="v1")

    result = run_promote(bucket, exported, accuracy=0.9)

    card = storage.read_text(version_file(bucket, result.version, promote.MODEL_CARD_FILE))
    for heading in (
        "# Model card: flowers v1",
        "## Data",
        "## Split",
        "## Model",
        "## Hyperparameters",
        "## Metrics",
        "## Gate decision",
        "## Package versions",
    ):
        assert f"\n{heading}\n" in f"\n{card}", heading
    assert f"Source: `{SOURCE_URI}` (tar)" in card
    assert f"Source sha256: `{SOURCE_SHA256}`" in card
    assert "Photos: 100 in 5 classes" in card
    assert "| roses | 16 | 2 | 2 |" in card
    assert "Seed: 7" in card
    assert f"| backbone | {BACKBONE_URI} |" in card
    assert "| learning_rate | 0.005 |" in card
    assert "| mean_latency_ms | 3.5 |" in card
    assert "| top_2_accuracy | 0.98 |" in card
    assert "| min_accuracy | passed | accuracy 0.900 >= min_accuracy 0.500 |" in card
    assert "| model.tflite sha256 | " + "ab" * 32 + " |" in card


def test_model_card_lists_package_versions(tmp_path):
    exported = make_export(tmp_path / "v1", version="v1")
    bucket = str(tmp_path / "bucket")

    run_promote(bucket, exported, accuracy=0.9)

    card = storage.read_text(version_file(bucket, "v1", promote.MODEL_CARD_FILE))
    for package in model_card.CARD_PACKAGES:
        assert f"| {package} | {importlib.metadata.version(package)} |" in card


def test_model_card_folder_source_has_no_sha256():
    card = make_card()
    folder_report = {**card.ingest_report, "source_uri": "/data/flower_photos", "source_kind": "folder", "source_sha256": None}

    text = model_card.render_model_card(
        model_name=MODEL_NAME,
        version="v1",
        version_uri="gs://models/flowers/versions/v1",
        card=dataclasses.replace(card, ingest_report=folder_report),
        export_info={"quantization": "int8"},
        export_metrics=export_metrics(0.9),
        decision=gate.judge(accuracy=0.9, min_accuracy=MIN_ACCURACY, max_regression=MAX_REGRESSION, champion=None),
        packages={"kfp": "2.17.3"},
    )

    assert "Source: `/data/flower_photos` (folder)" in text
    assert "Source sha256: none (a folder source has no archive to hash)" in text
    assert "| model.tflite sha256 | not recorded |" in text


def test_model_card_explains_metrics_and_use():
    card = make_card()
    hyperparameters = {**card.model_info.hyperparameters, "feature_memory_bytes": 1024, "cache_features": True}
    evaluation = {"accuracy": 0.9, "loss": 0.3, "top_2_accuracy": 1.0, "num_images": 10.0}
    for index, label in enumerate(LABELS):
        evaluation |= {f"precision_{label}": 0.5 + index / 10, f"recall_{label}": 0.75, f"f1_{label}": 0.6}

    text = model_card.render_model_card(
        model_name=MODEL_NAME,
        version="v1",
        version_uri="gs://models/flowers/versions/v1",
        card=dataclasses.replace(
            card,
            evaluation_metrics=evaluation,
            model_info=dataclasses.replace(card.model_info, hyperparameters=hyperparameters),
        ),
        export_info={"quantization": "int8", "input_dtype": "uint8", "num_calibration_images": 80},
        export_metrics={**export_metrics(0.9), "latency_num_threads": 1.0},
        decision=gate.judge(accuracy=0.9, min_accuracy=0.85, max_regression=MAX_REGRESSION, champion=None),
        packages={"kfp": "2.17.3"},
    )

    assert f"one of {len(LABELS)} classes: {', '.join(sorted(LABELS))}" in text
    assert "It has no 'other' class" in text
    assert "classifies 0.9 of the 10 test photos right (95% interval 0.596 to 0.982, Wilson score)" in text
    assert "one uint8 image per call of the LiteRT interpreter with 1 thread(s)" in text
    assert "Fractions: train 0.8, validation 0.1, test 0.1, per class" in text
    assert f"| {sorted(LABELS)[0]} | 0.5 | 0.75 | 0.6 |" in text
    assert "| precision_" not in text
    assert "feature_memory_bytes" not in text
    assert "cache_features" not in text
    assert "| epochs | 5 |" in text
    assert "| int8 calibration | 80 photos of the train split |" in text
    assert "The 95% interval of the accuracy (0.596 to 0.982) contains the threshold of min_accuracy" in text


def test_model_card_counts_photos_left_out():
    card = make_card()
    report = {**card.ingest_report, "num_duplicates": 2, "num_quarantined": 1, "num_skipped": 3}

    text = model_card.render_model_card(
        model_name=MODEL_NAME,
        version="v1",
        version_uri="gs://models/flowers/versions/v1",
        card=dataclasses.replace(card, ingest_report=report),
        export_info={"quantization": "float32"},
        export_metrics=export_metrics(0.9),
        decision=gate.judge(accuracy=0.9, min_accuracy=MIN_ACCURACY, max_regression=MAX_REGRESSION, champion=None),
        packages={"kfp": "2.17.3"},
    )

    assert "after ingest left out 2 duplicates, 1 photo that did not decode and 3 other files" in text
    assert "int8 calibration" not in text
    assert "contains the threshold" not in text


@pytest.mark.parametrize(
    ("accuracy", "num_images", "expected"),
    [(0.9, 10, (0.596, 0.982)), (0.915, 200, (0.868, 0.946)), (1.0, 5, (0.566, 1.0)), (0.0, 0, (0.0, 1.0))],
)
def test_accuracy_interval_matches_wilson(accuracy, num_images, expected):
    low, high = model_card.accuracy_interval(accuracy, num_images)

    assert low == pytest.approx(expected[0], abs=5e-4)
    assert high == pytest.approx(expected[1], abs=5e-4)


# --- versions are never overwritten ---


def test_promote_same_version_twice_fails(bucket, tmp_path):
    exported = make_export(tmp_path / "v1", version="v1")
    run_promote(bucket, exported, accuracy=0.9)
    _, pointer_generation = gate.read_champion_with_generation(bucket, MODEL_NAME)
    tflite_uri = version_file(bucket, "v1", promote.TFLITE_FILE)
    first_tflite = storage.read_bytes(tflite_uri)
    (exported / promote.TFLITE_FILE).write_bytes(b"TFL3 other bytes")

    with pytest.raises(promote.VersionExistsError, match=r"version .*/v1 already exists and a version is never overwritten"):
        run_promote(bucket, exported, accuracy=0.9)

    assert storage.read_bytes(tflite_uri) == first_tflite
    assert gate.read_champion_with_generation(bucket, MODEL_NAME)[1] == pointer_generation


def test_promote_incomplete_version_fails(bucket, tmp_path):
    exported = make_export(tmp_path / "v1", version="v1")
    storage.write_bytes(version_file(bucket, "v1", LABELS_FILE), b"daisy\n")

    with pytest.raises(promote.VersionExistsError, match=r"version .*/v1 exists but is incomplete \(no metrics\.json\)"):
        run_promote(bucket, exported, accuracy=0.9)

    assert not storage.exists(version_file(bucket, "v1", promote.TFLITE_FILE))
    assert gate.read_champion(bucket, MODEL_NAME) is None


# --- failures before the pointer moves ---


def test_promote_failure_before_pointer_keeps_champion(bucket, tmp_path):
    run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.8)

    def fail(version_uri: str) -> None:
        raise RuntimeError(f"injected failure after uploading {version_uri}")

    with pytest.raises(RuntimeError, match=r"injected failure after uploading .*/v2"):
        run_promote(
            bucket,
            make_export(tmp_path / "v2", version="v2"),
            accuracy=0.9,
            hooks=promote.PromotionHooks(after_version_upload=fail),
        )

    assert pointer_version(bucket) == "v1"
    for name in (LABELS_FILE, promote.MODEL_CARD_FILE, promote.TFLITE_FILE, promote.METRICS_FILE):
        assert storage.exists(version_file(bucket, "v2", name)), name


def test_promote_failed_decision_raises(tmp_path):
    bucket = str(tmp_path / "bucket")
    failed = gate.judge(accuracy=0.4, min_accuracy=MIN_ACCURACY, max_regression=MAX_REGRESSION, champion=None)

    with pytest.raises(ValueError, match=r"the gate rejected this model \(accuracy 0\.400 < min_accuracy 0\.500\)"):
        run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.4, decision=failed)

    assert not Path(bucket).exists()


def test_promote_accuracy_mismatch_raises(tmp_path):
    bucket = str(tmp_path / "bucket")
    decision = passed_decision(bucket, 0.9)

    with pytest.raises(ValueError, match=r"export accuracy 0\.8 differs from the accuracy 0\.9 that the gate judged"):
        run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.8, decision=decision)

    assert not Path(bucket).exists()


def test_promote_invalid_threshold_raises(tmp_path):
    bucket = str(tmp_path / "bucket")

    with pytest.raises(ValueError, match=r"invalid max_regression 5: must be a number in \[0, 1\]"):
        promote.promote(
            bucket=bucket,
            model_name=MODEL_NAME,
            exported_dir=make_export(tmp_path / "v1", version="v1"),
            export_metrics=export_metrics(0.9),
            decision=passed_decision(bucket, 0.9),
            card=make_card(),
            min_accuracy=MIN_ACCURACY,
            max_regression=5,
        )
    assert not Path(bucket).exists()


def test_promote_invalid_max_attempts_raises(tmp_path):
    bucket = str(tmp_path / "bucket")

    with pytest.raises(ValueError, match=r"invalid max_attempts 0: must be an integer >= 1"):
        run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.9, max_attempts=0)
    assert not Path(bucket).exists()


def test_promote_invalid_version_raises(tmp_path):
    bucket = str(tmp_path / "bucket")

    with pytest.raises(ValueError, match=r"invalid version '\.\./escape' in export_info\.json"):
        run_promote(bucket, make_export(tmp_path / "v1", version="../escape"), accuracy=0.9)
    assert not Path(bucket).exists()


def test_promote_missing_export_file_raises(tmp_path):
    exported = make_export(tmp_path / "v1", version="v1")
    (exported / promote.TFLITE_FILE).unlink()

    with pytest.raises(FileNotFoundError, match=r"model\.tflite not found: pass the folder written by the export step"):
        run_promote(str(tmp_path / "bucket"), exported, accuracy=0.9)


# --- the champion moves while promote runs ---


def test_promote_champion_moved_since_gate_rejects(bucket, tmp_path):
    decision = passed_decision(bucket, 0.8)
    run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.95)

    result = run_promote(bucket, make_export(tmp_path / "v2", version="v2"), accuracy=0.8, decision=decision)

    assert not result.became_champion
    assert result.champion_version == "v1"
    assert result.reason.startswith(
        "version v2 was not promoted: the champion is now v1, and this version fails against it "
        "(accuracy 0.800 < 0.940 = champion v1 accuracy 0.950 - max_regression 0.010)"
    )
    assert pointer_version(bucket) == "v1"
    assert storage.exists(version_file(bucket, "v2", promote.METRICS_FILE))


def test_promote_pointer_keeps_changing_raises(bucket, tmp_path):
    run_promote(bucket, make_export(tmp_path / "v1", version="v1"), accuracy=0.8)
    pointer_uri = gate.champion_uri(bucket, MODEL_NAME)

    def rewrite_pointer(attempt: int, champion: dict | None) -> None:
        # Another run rewrites the pointer between each read and write of this one.
        storage.write_bytes(pointer_uri, json.dumps(champion).encode("utf-8"))

    with pytest.raises(promote.PromotionError, match=r"changed before each of 2 writes .* version v2 is complete at"):
        run_promote(
            bucket,
            make_export(tmp_path / "v2", version="v2"),
            accuracy=0.9,
            hooks=promote.PromotionHooks(after_champion_read=rewrite_pointer),
            max_attempts=2,
        )
    assert pointer_version(bucket) == "v1"


# --- two processes promoting at once ---


def wait_at_first_read(barrier, release, attempt: int, champion: dict | None) -> None:
    """Hold the first read of the pointer until both processes have read it, then until release."""
    if attempt != 1:
        return
    barrier.wait(timeout=SYNC_TIMEOUT_S)
    if release is not None and not release.wait(timeout=SYNC_TIMEOUT_S):
        raise TimeoutError(f"release event not set within {SYNC_TIMEOUT_S} s")


def promote_in_process(bucket, exported_dir, accuracy, decision, barrier, release, result_path) -> None:
    """Promote in a child process and write the PromotionResult, or the error, as JSON."""
    hooks = promote.PromotionHooks(after_champion_read=functools.partial(wait_at_first_read, barrier, release))
    try:
        result = run_promote(bucket, Path(exported_dir), accuracy=accuracy, decision=decision, hooks=hooks)
        outcome = {"result": dataclasses.asdict(result)}
    except Exception as error:  # the parent reports it; a child's traceback would be lost
        outcome = {"error": repr(error)}
    Path(result_path).write_text(json.dumps(outcome), encoding="utf-8")


def start_promotion(context, tmp_path, bucket, *, version, accuracy, barrier, release=None):
    exported = make_export(tmp_path / version, version=version)
    decision = passed_decision(bucket, accuracy)
    result_path = tmp_path / f"{version}.json"
    process = context.Process(
        target=promote_in_process,
        args=(bucket, str(exported), accuracy, decision, barrier, release, str(result_path)),
    )
    process.start()
    return process, result_path


def finish_promotion(process, result_path: Path) -> dict:
    process.join(timeout=SYNC_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join(timeout=SYNC_TIMEOUT_S)
        pytest.fail(f"promotion process {process.pid} did not finish within {SYNC_TIMEOUT_S} s")
    outcome = json.loads(result_path.read_text(encoding="utf-8"))
    assert "error" not in outcome, outcome["error"]
    return outcome["result"]


@pytest.mark.slow
def test_race_loser_keeps_winner(bucket, tmp_path):
    # v_old is champion at 0.80. Both runs read it and pass against it; "strong" (0.90) writes
    # first; "weak" (0.82) then finds the pointer changed and fails against 0.90 - 0.01.
    run_promote(bucket, make_export(tmp_path / "old", version="v_old"), accuracy=0.8)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    release_weak = context.Event()

    strong = start_promotion(context, tmp_path, bucket, version="strong", accuracy=0.9, barrier=barrier)
    weak = start_promotion(
        context, tmp_path, bucket, version="weak", accuracy=0.82, barrier=barrier, release=release_weak
    )
    strong_result = finish_promotion(*strong)
    release_weak.set()
    weak_result = finish_promotion(*weak)

    assert strong_result["became_champion"]
    assert strong_result["attempts"] == 1
    assert not weak_result["became_champion"]
    assert weak_result["attempts"] == 2
    assert weak_result["champion_version"] == "strong"
    assert weak_result["reason"].startswith(
        "version weak was not promoted: version strong won the race for the champion pointer, "
        "and this version fails against it (accuracy 0.820 < 0.890 = champion strong accuracy "
        "0.900 - max_regression 0.010)"
    )
    pointer = gate.read_champion(bucket, MODEL_NAME)
    assert pointer["version"] == "strong"
    assert pointer["previous_version"] == "v_old"
    for version in ("strong", "weak"):
        assert storage.exists(version_file(bucket, version, promote.METRICS_FILE)), version


@pytest.mark.slow
def test_race_free_order_keeps_one_pointer(bucket, tmp_path):
    # Both runs read the same champion and write whenever they get there. Whichever order the
    # writes take, "strong" must end as champion: it passes against "weak" (0.90 >= 0.81), and
    # "weak" fails against it (0.82 < 0.89). Exactly one write must have lost.
    run_promote(bucket, make_export(tmp_path / "old", version="v_old"), accuracy=0.8)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)

    strong = start_promotion(context, tmp_path, bucket, version="strong", accuracy=0.9, barrier=barrier)
    weak = start_promotion(context, tmp_path, bucket, version="weak", accuracy=0.82, barrier=barrier)
    results = {"strong": finish_promotion(*strong), "weak": finish_promotion(*weak)}

    pointer = gate.read_champion(bucket, MODEL_NAME)
    assert pointer["version"] == "strong"
    assert pointer["previous_version"] in ("v_old", "weak")
    assert storage.exists(storage.join(pointer["uri"], promote.METRICS_FILE))
    assert results["strong"]["became_champion"]
    assert sorted(result["attempts"] for result in results.values()) == [1, 2]
    for version in ("strong", "weak"):
        assert storage.exists(version_file(bucket, version, promote.METRICS_FILE)), version
    if pointer["previous_version"] == "v_old":
        assert "won the race for the champion pointer" in results["weak"]["reason"]
    else:
        assert "after 2 attempts, because other runs moved the pointer" in results["strong"]["reason"]


# --- promote_component through the KFP local runner ---

promote_op = dsl.component(promote.promote_component, base_image="python:3.11", install_kfp_package=False)


def write_upstream_artifacts(root: Path, card: model_card.ModelCardInputs) -> dict[str, Path]:
    """Write the image Dataset, split and Model folders that promote_component reads."""
    folders = {name: root / name for name in ("images", "model", "train", "validation", "test")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (folders["images"] / "ingest_report.json").write_text(json.dumps(card.ingest_report), encoding="utf-8")
    for name in ("train", "validation", "test"):
        (folders[name] / "split.json").write_text(json.dumps(card.splits[name]), encoding="utf-8")
    (folders["model"] / "model_info.json").write_text(
        json.dumps(dataclasses.asdict(card.model_info)), encoding="utf-8"
    )
    return folders


@pytest.mark.slow
def test_promote_component_local_runner(tmp_path):
    bucket = str(tmp_path / "bucket")
    card = make_card()
    folders = write_upstream_artifacts(tmp_path / "upstream", card)
    exported = make_export(tmp_path / "exported", version="v1")
    decision_dir = tmp_path / "decision"
    gate.write_decision(passed_decision(bucket, 0.9), decision_dir)

    @dsl.pipeline(name="promote-from-artifacts")
    def promote_from_artifacts() -> str:
        def imported(path: Path, artifact_class, metadata: dict | None = None):
            return dsl.importer(
                artifact_uri=str(path), artifact_class=artifact_class, metadata=metadata or {}
            ).output

        promoted = promote_op(
            tflite_model=imported(exported, dsl.Model),
            export_metrics=imported(tmp_path / "export_metrics", dsl.Metrics, export_metrics(0.9)),
            decision=imported(decision_dir, dsl.Artifact),
            images=imported(folders["images"], dsl.Dataset),
            model=imported(folders["model"], dsl.Model),
            train_data=imported(folders["train"], dsl.Dataset),
            validation_data=imported(folders["validation"], dsl.Dataset),
            test_data=imported(folders["test"], dsl.Dataset),
            evaluation_metrics=imported(tmp_path / "evaluation_metrics", dsl.Metrics, card.evaluation_metrics),
            bucket=bucket,
            model_name=MODEL_NAME,
            min_accuracy=MIN_ACCURACY,
            max_regression=MAX_REGRESSION,
        )
        promoted.set_caching_options(False)
        return promoted.outputs["version_uri"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline_root"))
    run = promote_from_artifacts()

    assert run.output == promote.version_uri(bucket, MODEL_NAME, "v1")
    assert pointer_version(bucket) == "v1"
    card_text = storage.read_text(version_file(bucket, "v1", promote.MODEL_CARD_FILE))
    assert f"Source sha256: `{SOURCE_SHA256}`" in card_text
    assert "| top_2_accuracy | 0.98 |" in card_text
