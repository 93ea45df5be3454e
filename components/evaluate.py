"""Evaluate step: the trained Keras model's metrics on the test split, and its KFP component.

The photos get the training preprocessing (components.preprocessing.load_image). The reported
loss is the categorical cross-entropy of the predicted probabilities (scikit-learn's log_loss)
without label smoothing and without the L2 penalty: smoothing is a training device, and the plain
cross-entropy is the loss other tools report for a test set. It is therefore lower than the
val_loss that training reports, which includes both.
"""

# No `from __future__ import annotations`: KFP must read the component's annotations as types,
# and postponed annotations would reach it as strings such as "Input[Dataset]".

import dataclasses
import logging
from pathlib import Path
from typing import NamedTuple

from kfp.dsl import ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras
from sklearn import metrics as sklearn_metrics

from components import artifacts, preprocessing, reports

logger = logging.getLogger(__name__)

TOP_K = 2
MAX_MISCLASSIFIED_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclasses.dataclass(frozen=True)
class Misclassified:
    """A test photo whose top prediction is wrong."""

    path: str
    true_label: str
    predicted_label: str
    confidence: float  # the predicted label's probability


@dataclasses.dataclass
class EvaluationResult:
    """Metrics of a model on a test split."""

    accuracy: float
    loss: float  # mean cross-entropy without label smoothing
    top_k_accuracy: float  # top-2, or 1.0 when the model has at most 2 classes
    labels: list[str]
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]  # rows: true labels, columns: predicted labels
    num_images: int
    misclassified: list[Misclassified]  # every misclassified photo, most confident first
    report_path: str


def predict_probabilities(
    model: tf_keras.Model, paths: list[str], *, input_size: tuple[int, int], batch_size: int
) -> np.ndarray:
    """Run the model over the photos at paths; returns [len(paths), num_classes] probabilities."""
    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(lambda path: preprocessing.load_image(path, input_size), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    probabilities = np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)
    # The float32 softmax sums to 1 only within rounding; scikit-learn's log_loss warns on that.
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def compute_metrics(
    true_ids: np.ndarray, probabilities: np.ndarray, labels: list[str]
) -> tuple[float, float, float, list[ClassMetrics], list[list[int]]]:
    """Compute accuracy, loss, top-2 accuracy, per-class metrics and the confusion matrix."""
    class_ids = list(range(len(labels)))
    predicted_ids = probabilities.argmax(axis=1)
    accuracy = float(sklearn_metrics.accuracy_score(true_ids, predicted_ids))
    loss = float(sklearn_metrics.log_loss(true_ids, probabilities, labels=class_ids))
    top_k_accuracy = 1.0  # every label is among the top k when there are no more than k
    if len(labels) > TOP_K:
        top_k_accuracy = float(
            sklearn_metrics.top_k_accuracy_score(true_ids, probabilities, k=TOP_K, labels=class_ids)
        )
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        true_ids, predicted_ids, labels=class_ids, zero_division=0
    )
    per_class = [
        ClassMetrics(label, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, label in enumerate(labels)
    ]
    matrix = sklearn_metrics.confusion_matrix(true_ids, predicted_ids, labels=class_ids)
    return accuracy, loss, top_k_accuracy, per_class, matrix.tolist()


def find_misclassified(
    paths: list[str], true_ids: np.ndarray, probabilities: np.ndarray, labels: list[str]
) -> list[Misclassified]:
    """List the photos whose top prediction is wrong, the most confident mistakes first."""
    predicted_ids = probabilities.argmax(axis=1)
    wrong = [
        Misclassified(
            path=paths[i],
            true_label=labels[true_ids[i]],
            predicted_label=labels[predicted_ids[i]],
            confidence=float(probabilities[i, predicted_ids[i]]),
        )
        for i in np.flatnonzero(predicted_ids != true_ids)
    ]
    return sorted(wrong, key=lambda item: -item.confidence)


def _read_test_split(
    images_dir: str | Path, test_dir: str | Path, labels: list[str]
) -> tuple[list[str], np.ndarray]:
    rows = artifacts.read_manifest(test_dir)
    if not rows:
        raise ValueError(f"the test split {test_dir} has no photos; split with a test fraction above 0")
    index_of = {label: index for index, label in enumerate(labels)}
    unknown = sorted({row.label for row in rows} - index_of.keys())
    if unknown:
        raise ValueError(
            f"the test split {test_dir} has labels {unknown} that the model does not know "
            f"(model labels: {labels}); evaluate on a split of the Dataset the model was trained on"
        )
    true_ids = np.array([index_of[row.label] for row in rows], dtype=np.int64)
    return artifacts.image_paths(images_dir, rows), true_ids


def evaluate(
    *,
    images_dir: str | Path,
    model_dir: str | Path,
    test_dir: str | Path,
    report_path: str | Path,
    batch_size: int = 32,
) -> EvaluationResult:
    """Evaluate the Model folder at model_dir on the test split and write a Markdown report."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size={batch_size!r} is invalid: expected an integer of at least 1 (default 32)"
        )
    labels = artifacts.read_labels(model_dir)
    info = artifacts.read_model_info(model_dir)
    paths, true_ids = _read_test_split(images_dir, test_dir, labels)

    model = tf_keras.models.load_model(str(Path(model_dir) / artifacts.SAVED_MODEL_DIR), compile=False)
    probabilities = predict_probabilities(
        model, paths, input_size=(info.input_height, info.input_width), batch_size=batch_size
    )
    accuracy, loss, top_k_accuracy, per_class, matrix = compute_metrics(true_ids, probabilities, labels)
    result = EvaluationResult(
        accuracy=accuracy, loss=loss, top_k_accuracy=top_k_accuracy, labels=labels, per_class=per_class,
        confusion_matrix=matrix, num_images=len(paths),
        misclassified=find_misclassified(paths, true_ids, probabilities, labels),
        report_path=str(report_path),
    )

    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(evaluation_report(result), encoding="utf-8")
    logger.info("evaluated %s on %s test photos: accuracy %.4f, loss %.4f; report at %s",
                model_dir, len(paths), accuracy, loss, report_path)
    return result


def evaluation_report(result: EvaluationResult) -> str:
    """Format the metrics, confusion matrix and the most confident mistakes as Markdown."""
    listed = result.misclassified[:MAX_MISCLASSIFIED_SHOWN]
    mistakes = [
        (f'<img src="{reports.thumbnail_data_uri(item.path)}" alt="{Path(item.path).name}"/>',
         f"`{item.path}`", item.true_label, item.predicted_label, item.confidence)
        for item in listed
    ]
    return "\n".join([
        "# Evaluation report\n",
        f"{result.num_images} test photos, {len(result.labels)} classes. The loss is cross-entropy "
        "without label smoothing.\n",
        reports.markdown_table(["metric", "value"], [
            ("accuracy", result.accuracy),
            ("loss", result.loss),
            (f"top-{TOP_K} accuracy", result.top_k_accuracy),
        ]),
        "## Per class\n",
        reports.markdown_table(["label", "precision", "recall", "F1", "support"],
                               [dataclasses.astuple(item) for item in result.per_class]),
        "## Confusion matrix (rows: true label, columns: predicted label)\n",
        reports.markdown_table(["true \\ predicted", *result.labels],
                               [(label, *row) for label, row in zip(result.labels, result.confusion_matrix)]),
        f"## Misclassified photos ({len(listed)} of {len(result.misclassified)}, most confident first)\n",
        reports.markdown_table(["photo", "path", "true", "predicted", "confidence"], mistakes)
        if mistakes else "None.\n",
    ])


def metric_values(result: EvaluationResult) -> dict[str, float]:
    """Flatten the result into scalar metrics for Metrics.log_metric."""
    values = {
        "accuracy": result.accuracy,
        "loss": result.loss,
        f"top_{TOP_K}_accuracy": result.top_k_accuracy,
        "num_images": float(result.num_images),
    }
    for item in result.per_class:
        values[f"precision_{item.label}"] = item.precision
        values[f"recall_{item.label}"] = item.recall
        values[f"f1_{item.label}"] = item.f1
    return values


def evaluate_component(
    images: Input[Dataset],
    model: Input[Model],
    test_data: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> NamedTuple("EvaluateOutputs", [("accuracy", float)]):
    """Evaluate the trained model on the test split; returns its accuracy."""
    import logging
    from collections import namedtuple

    from components import evaluate as step

    result = step.evaluate(
        images_dir=images.path, model_dir=model.path, test_dir=test_data.path, report_path=report.path
    )
    for name, value in step.metric_values(result).items():
        metrics.log_metric(name, value)
    classification_metrics.log_confusion_matrix(result.labels, result.confusion_matrix)
    logging.getLogger(__name__).info(
        "test accuracy %.4f, loss %.4f on %s photos", result.accuracy, result.loss, result.num_images
    )
    return namedtuple("EvaluateOutputs", ["accuracy"])(result.accuracy)
