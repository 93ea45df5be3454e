"""Tests of the evaluate step: a hand-checked case with known probabilities, and a trained model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tf_keras
from kfp import dsl
from PIL import Image
from sklearn import metrics as sklearn_metrics

from components import artifacts, evaluate
from tests.test_train import build_mini_splits, run_train, tiny_spec
from tests.tiny_backbone import save_tiny_backbone

COLOR_LABELS = ["red", "green", "blue"]
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
# (photo color, true label): three right, a red photo labeled blue and a green photo labeled red.
HAND_CASE = [("red", "red"), ("green", "green"), ("blue", "blue"), ("red", "blue"), ("green", "red")]


def write_color_model(model_dir: Path) -> None:
    """Save a Model folder whose softmax gives a solid color photo known probabilities.

    Pooled RGB -> logits with kernel ln(8) * identity and bias (0, 0, ln 2): a red photo gets
    exp(logits) = (8, 1, 2), so probabilities (8, 1, 2) / 11; green gets (1, 8, 2) / 11 and
    blue (1, 1, 16) / 18.
    """
    inputs = tf_keras.Input(shape=(8, 8, 3))
    dense = tf_keras.layers.Dense(3, activation="softmax")
    model = tf_keras.Model(inputs, dense(tf_keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.eye(3, dtype=np.float32) * math.log(8), np.array([0, 0, math.log(2)], np.float32)])
    model.save(str(model_dir / artifacts.SAVED_MODEL_DIR), save_format="tf")
    artifacts.write_labels(model_dir / artifacts.LABELS_FILE, COLOR_LABELS)
    artifacts.write_model_info(model_dir, artifacts.ModelInfo(
        model_spec="custom", backbone_uri="none", input_height=8, input_width=8,
    ))


def write_color_split(root: Path, cases: list[tuple[str, str]]) -> tuple[Path, Path]:
    images_dir, test_dir = root / "images", root / "test"
    (images_dir / "images").mkdir(parents=True)
    test_dir.mkdir()
    rows = []
    for number, (color, label) in enumerate(cases):
        relative = f"images/{number}_{color}.png"
        Image.new("RGB", (12, 10), COLORS[color]).save(images_dir / relative)
        rows.append(artifacts.ManifestRow(
            path=relative, label=label, sha256="0" * 64, width=12, height=10, source=relative,
        ))
    artifacts.write_manifest(test_dir / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(test_dir / artifacts.LABELS_FILE, COLOR_LABELS)
    return images_dir, test_dir


@pytest.fixture(scope="module")
def hand_case(tmp_path_factory) -> evaluate.EvaluationResult:
    root = tmp_path_factory.mktemp("hand_case")
    (root / "model").mkdir()
    write_color_model(root / "model")
    images_dir, test_dir = write_color_split(root, HAND_CASE)
    return evaluate.evaluate(
        images_dir=images_dir, model_dir=root / "model", test_dir=test_dir, report_path=root / "report.md", batch_size=2
    )


def test_evaluate_accuracy_hand_checked(hand_case):
    assert hand_case.accuracy == pytest.approx(3 / 5)
    assert hand_case.top_k_accuracy == pytest.approx(4 / 5)
    assert hand_case.num_images == 5


def test_evaluate_loss_hand_checked(hand_case):
    true_probabilities = [8 / 11, 8 / 11, 16 / 18, 2 / 11, 1 / 11]
    expected = -sum(math.log(p) for p in true_probabilities) / 5
    assert hand_case.loss == pytest.approx(expected, abs=1e-5)


def test_evaluate_per_class_hand_checked(hand_case):
    by_label = {item.label: item for item in hand_case.per_class}
    assert (by_label["red"].precision, by_label["red"].recall, by_label["red"].support) == (0.5, 0.5, 2)
    assert (by_label["green"].precision, by_label["green"].recall, by_label["green"].support) == (0.5, 1.0, 1)
    assert (by_label["blue"].precision, by_label["blue"].recall, by_label["blue"].support) == (1.0, 0.5, 2)
    assert by_label["red"].f1 == pytest.approx(0.5)
    assert by_label["green"].f1 == pytest.approx(2 / 3)


def test_evaluate_confusion_matrix_hand_checked(hand_case):
    assert hand_case.confusion_matrix == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_evaluate_agrees_with_sklearn(hand_case):
    label_ids = {label: index for index, label in enumerate(COLOR_LABELS)}
    true_ids = [label_ids[label] for _, label in HAND_CASE]
    probabilities = np.array([[8, 1, 2], [1, 8, 2], [1, 1, 16], [8, 1, 2], [1, 8, 2]], dtype=np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert hand_case.loss == pytest.approx(sklearn_metrics.log_loss(true_ids, probabilities), abs=1e-5)
    f1 = sklearn_metrics.f1_score(true_ids, probabilities.argmax(axis=1), average=None)
    np.testing.assert_allclose([item.f1 for item in hand_case.per_class], f1)


def test_evaluate_lists_misclassified(hand_case):
    mistakes = [(Path(item.path).name, item.true_label, item.predicted_label) for item in hand_case.misclassified]
    assert mistakes == [("3_red.png", "blue", "red"), ("4_green.png", "red", "green")]
    assert hand_case.misclassified[0].confidence == pytest.approx(8 / 11, abs=1e-6)


def test_evaluate_report_has_tables(hand_case):
    report = Path(hand_case.report_path).read_text(encoding="utf-8")
    assert "| accuracy | 0.6000 |" in report
    assert "| blue | 1 | 0 | 1 |" in report
    assert report.count('<img src="data:image/jpeg;base64,') == 2


def test_evaluate_rejects_unknown_label(tmp_path):
    (tmp_path / "model").mkdir()
    write_color_model(tmp_path / "model")
    images_dir, test_dir = write_color_split(tmp_path, [("red", "purple")])
    with pytest.raises(ValueError, match=r"has labels \['purple'\] that the model does not know"):
        evaluate.evaluate(images_dir=images_dir, model_dir=tmp_path / "model", test_dir=test_dir,
                          report_path=tmp_path / "report.md")


def test_evaluate_rejects_empty_split(tmp_path):
    (tmp_path / "model").mkdir()
    write_color_model(tmp_path / "model")
    images_dir, test_dir = write_color_split(tmp_path, [])
    with pytest.raises(ValueError, match=r"the test split .* has no photos; split with a test fraction above 0"):
        evaluate.evaluate(images_dir=images_dir, model_dir=tmp_path / "model", test_dir=test_dir,
                          report_path=tmp_path / "report.md")


def test_evaluate_rejects_invalid_batch_size(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=0 is invalid: expected an integer of at least 1"):
        evaluate.evaluate(images_dir=tmp_path, model_dir=tmp_path, test_dir=tmp_path,
                          report_path=tmp_path / "report.md", batch_size=0)


def test_evaluate_rejects_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"labels.txt not found"):
        evaluate.evaluate(images_dir=tmp_path, model_dir=tmp_path, test_dir=tmp_path, report_path=tmp_path / "r.md")


@pytest.mark.slow
def test_evaluate_component_on_trained_model(tmp_path, mini_archive):
    splits = build_mini_splits(tmp_path / "data")
    spec = tiny_spec(save_tiny_backbone(tmp_path / "backbone", feature_dim=8))
    trained = run_train(splits, tmp_path, spec, epochs=2)
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    confusion = dsl.ClassificationMetrics(uri=str(tmp_path / "classification_metrics"))
    report = dsl.Markdown(uri=str(tmp_path / "evaluation.md"))

    outputs = evaluate.evaluate_component(
        images=dsl.Dataset(uri=str(splits.images_dir)), model=dsl.Model(uri=trained.model_dir),
        test_data=dsl.Dataset(uri=str(splits.test_dir)), metrics=metrics,
        classification_metrics=confusion, report=report,
    )

    assert outputs.accuracy == metrics.metadata["accuracy"]
    assert 0.0 <= outputs.accuracy <= 1.0
    matrix = confusion.metadata["confusionMatrix"]
    assert [item["displayName"] for item in matrix["annotationSpecs"]] == trained.labels
    assert sum(sum(row["row"]) for row in matrix["rows"]) == 20
    assert "precision_tulips" in metrics.metadata
    assert (tmp_path / "evaluation.md").is_file()


def test_evaluate_component_builds_kfp_component():
    component = dsl.component(evaluate.evaluate_component, base_image="unused", install_kfp_package=False)
    assert set(component.component_spec.inputs) == {"images", "model", "test_data"}
    assert set(component.component_spec.outputs) == {"metrics", "classification_metrics", "report", "accuracy"}
