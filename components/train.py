"""Train step: TFLite Model Maker's image-classifier recipe on tf-keras, and its KFP component.

The model is Model Maker's `image_classifier.create` with its defaults (hub library path):
Input(h, w, 3) -> hub.KerasLayer(trainable=train_whole_model) -> Dropout(0.2) ->
Dense(num_classes, softmax, L2 1e-4 kernel regularizer), trained with
CategoricalCrossentropy(label_smoothing=0.1) and SGD(learning_rate=0.005, momentum=0.9) at a
constant rate, batch 32, 5 epochs, on photos scaled to [0, 1] and resized bilinearly.

Unlike Model Maker, whose `shuffle` defaults to False, the training photos are shuffled every
epoch with a seeded permutation. Every epoch covers each training photo once, so the last batch
is smaller when the count is not a multiple of the batch size.

With a frozen backbone and no augmentation, the backbone runs once per photo (components.features)
and only the head trains for the epochs. Otherwise every epoch runs the whole model end to end.
"""

# No `from __future__ import annotations`: KFP must read the component's annotations as types,
# and postponed annotations would reach it as strings such as "Input[Dataset]".

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras

from components import artifacts, classifier, features, reports, training_data, tuning
from components.model_spec import ModelSpec, load_backbone_layer
from components.train_options import TrainOptions, uses_feature_cache, validate_train_options
from components.training_data import SplitData

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"  # train then validation rows, when they exceed the memory budget


@dataclasses.dataclass
class TrainResult:
    """Outputs, history and timings of one train() call."""

    model_dir: str
    report_path: str
    labels: list[str]
    # loss, accuracy, val_loss, val_accuracy, one value per epoch. With tune_head, the head trains on
    # train + validation, so val_loss and val_accuracy are the chosen grid point's cross-validation.
    history: dict[str, list[float]]
    hyperparameters: dict[str, Any]  # the options the saved model was trained with, after tuning
    trials: list[tuning.TuningTrial]
    used_feature_cache: bool
    features_spilled: bool
    num_train_images: int
    num_validation_images: int
    feature_seconds: float  # the one backbone pass of the features path; 0 end to end
    fit_seconds: float  # the epochs of the final model (head only on the features path)
    tuning_seconds: float
    total_seconds: float  # the whole train() call, saving included


@dataclasses.dataclass
class _FitOutcome:
    model: tf_keras.Model
    history: dict[str, list[float]]
    options: TrainOptions
    trials: list[tuning.TuningTrial]
    features_spilled: bool = False
    feature_seconds: float = 0.0
    tuning_seconds: float = 0.0
    fit_seconds: float = 0.0


def _read_labels_of_splits(train_dir: str | Path, validation_dir: str | Path) -> list[str]:
    labels = artifacts.read_labels(train_dir)
    validation_labels = artifacts.read_labels(validation_dir)
    if labels != validation_labels:
        raise ValueError(
            f"labels.txt differs between the train split {train_dir} ({labels}) and the validation "
            f"split {validation_dir} ({validation_labels}); use splits made from the same Dataset"
        )
    if len(labels) < 2:
        raise ValueError(f"labels.txt of {train_dir} lists {labels}: a classifier needs at least 2 classes")
    return labels


def _validate_inputs(
    train_split: SplitData,
    validation_split: SplitData,
    *,
    options: TrainOptions,
    spec: ModelSpec,
    output_dir: Path,
) -> None:
    if len(train_split.paths) < options.batch_size:
        raise ValueError(
            f"the train split has {len(train_split.paths)} photos, fewer than batch_size="
            f"{options.batch_size}; set a smaller batch_size or add photos"
        )
    if not validation_split.paths:
        raise ValueError("the validation split has no photos; split with a validation fraction above 0")
    if spec.input_height <= 0 or spec.input_width <= 0:
        raise ValueError(
            f"model spec {spec.name!r} has input size {spec.input_height}x{spec.input_width}: "
            "both must be positive; pass input_size for a custom backbone"
        )
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"output folder {output_dir} exists and is not empty; pass a new or empty folder")


def _fit_on_features(
    backbone: tf_keras.layers.Layer, train_split: SplitData, validation_split: SplitData, *,
    num_classes: int, input_size: tuple[int, int], options: TrainOptions,
) -> _FitOutcome:
    with tempfile.TemporaryDirectory(prefix="features-", dir=options.feature_spill_dir or None) as work_dir:
        started = time.perf_counter()
        train_set, validation_set = _extract_feature_sets(
            backbone, train_split, validation_split,
            num_classes=num_classes, input_size=input_size, options=options, work_dir=Path(work_dir),
        )
        outcome = _FitOutcome(
            model=None, history={}, options=options, trials=[],
            features_spilled=train_set.spilled or validation_set.spilled,
            feature_seconds=time.perf_counter() - started,
        )
        if options.tune_head:
            _fit_tuned_head(outcome, backbone, train_set, validation_set, input_size=input_size)
        else:
            started = time.perf_counter()
            dropout, dense = classifier.build_head_layers(num_classes, options)
            outcome.model = classifier.build_classifier(
                backbone, input_size=input_size, dropout=dropout, dense=dense
            )
            head = classifier.build_head_model(train_set.features.shape[1], dropout=dropout, dense=dense)
            classifier.compile_for_training(head, options)
            outcome.history = features.fit_head(
                head, train_set, validation_set,
                epochs=options.epochs, batch_size=options.batch_size, seed=options.seed,
            )
            outcome.fit_seconds = time.perf_counter() - started
    return outcome


def _extract_feature_sets(
    backbone: tf_keras.layers.Layer, train_split: SplitData, validation_split: SplitData, *,
    num_classes: int, input_size: tuple[int, int], options: TrainOptions, work_dir: Path,
) -> tuple[features.FeatureSet, features.FeatureSet]:
    # One pass over both splits traces the backbone once, which takes seconds for a large one.
    stored = features.extract_features(
        backbone, train_split.paths + validation_split.paths, input_size=input_size,
        batch_size=options.batch_size, memory_budget_bytes=options.feature_memory_bytes,
        spill_path=work_dir / FEATURES_FILE,
    )
    num_train = len(train_split.paths)
    return (
        features.FeatureSet(stored[:num_train], train_split.onehot(num_classes)),
        features.FeatureSet(stored[num_train:], validation_split.onehot(num_classes)),
    )


def _fit_tuned_head(
    outcome: _FitOutcome, backbone: tf_keras.layers.Layer, train_set: features.FeatureSet,
    validation_set: features.FeatureSet, *, input_size: tuple[int, int],
) -> None:
    """Choose the head by cross-validation and put the final head, trained on train + validation, in outcome.

    outcome.history then has the final head's training curves as loss and accuracy, and the chosen
    grid point's cross-validated scores as val_loss and val_accuracy.
    """
    tuned = tuning.tune_head(train_set, validation_set, options=outcome.options)
    outcome.trials, outcome.options = tuned.trials, tuned.options
    outcome.tuning_seconds, outcome.fit_seconds = tuned.cv_seconds, tuned.final_fit_seconds
    outcome.history = tuned.head.history

    dropout, dense = classifier.build_head_layers(train_set.onehot_labels.shape[1], tuned.options)
    outcome.model = classifier.build_classifier(backbone, input_size=input_size, dropout=dropout, dense=dense)
    dense.set_weights([tuned.head.kernel, tuned.head.bias])


def _fit_end_to_end(
    backbone: tf_keras.layers.Layer, train_split: SplitData, validation_split: SplitData, *,
    num_classes: int, input_size: tuple[int, int], options: TrainOptions,
) -> _FitOutcome:
    started = time.perf_counter()
    dropout, dense = classifier.build_head_layers(num_classes, options)
    model = classifier.build_classifier(backbone, input_size=input_size, dropout=dropout, dense=dense)
    classifier.compile_for_training(model, options)

    def train_dataset_for(epoch: int, order: np.ndarray) -> tf.data.Dataset:
        augment_seed = (options.seed, epoch) if options.use_augmentation else None
        return training_data.image_dataset(
            train_split, num_classes=num_classes, input_size=input_size,
            batch_size=options.batch_size, order=order, augment_seed=augment_seed,
        )

    history = features.fit_epochs(
        model,
        train_dataset_for=train_dataset_for,
        validation_data=training_data.image_dataset(
            validation_split, num_classes=num_classes, input_size=input_size, batch_size=options.batch_size
        ),
        num_train_images=len(train_split.paths),
        epochs=options.epochs,
        seed=options.seed,
    )
    return _FitOutcome(model=model, history=history, options=options, trials=[],
                       fit_seconds=time.perf_counter() - started)


def _save_model(
    outcome: _FitOutcome, staging_dir: Path, *, labels: list[str], spec: ModelSpec,
    num_train_images: int, num_validation_images: int,
) -> None:
    outcome.model.save(str(staging_dir / artifacts.SAVED_MODEL_DIR), save_format="tf")
    artifacts.write_labels(staging_dir / artifacts.LABELS_FILE, labels)
    artifacts.write_model_info(staging_dir, artifacts.ModelInfo(
        model_spec=spec.name,
        backbone_uri=spec.uri,
        input_height=spec.input_height,
        input_width=spec.input_width,
        hyperparameters=dataclasses.asdict(outcome.options),
        num_train_images=num_train_images,
        num_validation_images=num_validation_images,
    ))


def train(
    *,
    images_dir: str | Path,
    train_dir: str | Path,
    validation_dir: str | Path,
    output_dir: str | Path,
    report_path: str | Path,
    spec: ModelSpec,
    options: TrainOptions,
) -> TrainResult:
    """Train a classifier on the train split and write a Model folder to output_dir.

    The folder (components.artifacts layout) is written beside output_dir under a temporary name
    and renamed at the end, so a failed run leaves no half-written model at output_dir.
    report_path gets a Markdown report with the training curves and any tuning trials.
    """
    started = time.perf_counter()
    validate_train_options(options)
    output_dir = Path(output_dir)
    labels = _read_labels_of_splits(train_dir, validation_dir)
    train_split = training_data.read_split(images_dir, train_dir, labels)
    validation_split = training_data.read_split(images_dir, validation_dir, labels)
    _validate_inputs(train_split, validation_split, options=options, spec=spec, output_dir=output_dir)
    logger.info(
        "training %s on %s train and %s validation photos of %s classes, features cached: %s",
        spec.name, len(train_split.paths), len(validation_split.paths), len(labels),
        uses_feature_cache(options),
    )

    tf_keras.utils.set_random_seed(options.seed)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        outcome = _fit(spec, train_split, validation_split, num_classes=len(labels), options=options)
        _save_model(
            outcome, staging_dir, labels=labels, spec=spec,
            num_train_images=len(train_split.paths), num_validation_images=len(validation_split.paths),
        )
        _publish(staging_dir, output_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise

    result = _result(
        outcome, output_dir=output_dir, report_path=Path(report_path), labels=labels,
        num_train_images=len(train_split.paths), num_validation_images=len(validation_split.paths),
        total_seconds=time.perf_counter() - started,
    )
    _write_report(result, spec)
    logger.info("wrote the model to %s and the report to %s", output_dir, report_path)
    return result


def _fit(
    spec: ModelSpec,
    train_split: SplitData,
    validation_split: SplitData,
    *,
    num_classes: int,
    options: TrainOptions,
) -> _FitOutcome:
    input_size = (spec.input_height, spec.input_width)
    backbone = load_backbone_layer(spec, trainable=options.train_whole_model)
    fit = _fit_on_features if uses_feature_cache(options) else _fit_end_to_end
    return fit(
        backbone, train_split, validation_split,
        num_classes=num_classes, input_size=input_size, options=options,
    )


def _publish(staging_dir: Path, output_dir: Path) -> None:
    # os.rename replaces an empty folder (a KFP output the caller created) in one step.
    if output_dir.exists():
        output_dir.rmdir()
    os.rename(staging_dir, output_dir)


def _result(outcome: _FitOutcome, *, output_dir: Path, report_path: Path, labels: list[str],
            num_train_images: int, num_validation_images: int, total_seconds: float) -> TrainResult:
    return TrainResult(
        model_dir=str(output_dir),
        report_path=str(report_path),
        labels=labels,
        history=outcome.history,
        hyperparameters=dataclasses.asdict(outcome.options),
        trials=outcome.trials,
        used_feature_cache=uses_feature_cache(outcome.options),
        features_spilled=outcome.features_spilled,
        num_train_images=num_train_images,
        num_validation_images=num_validation_images,
        feature_seconds=outcome.feature_seconds,
        fit_seconds=outcome.fit_seconds,
        tuning_seconds=outcome.tuning_seconds,
        total_seconds=total_seconds,
    )


def _write_report(result: TrainResult, spec: ModelSpec) -> None:
    path = Path(result.report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = reports.training_report(result, model_spec=spec.name, backbone_uri=spec.uri)
    path.write_text(report, encoding="utf-8")


def metric_values(result: TrainResult) -> dict[str, float]:
    """Flatten final, per-epoch and tuning numbers into scalar metrics for Metrics.log_metric."""
    values: dict[str, float] = {}
    for key, per_epoch in result.history.items():
        values[f"final_{key}"] = per_epoch[-1]
        for epoch, value in enumerate(per_epoch, start=1):
            values[f"epoch_{epoch}_{key}"] = value
    for number, trial in enumerate(result.trials, start=1):
        for field, value in dataclasses.asdict(trial).items():
            values[f"trial_{number}_{field}"] = float(value)
    values["num_train_images"] = float(result.num_train_images)
    values["num_validation_images"] = float(result.num_validation_images)
    values["train_seconds"] = result.total_seconds
    return values


def model_metadata(result: TrainResult, spec: ModelSpec) -> dict[str, Any]:
    """Describe the trained model for the Model artifact's metadata."""
    return {
        "model_spec": spec.name,
        "backbone_uri": spec.uri,
        "input_height": spec.input_height,
        "input_width": spec.input_width,
        "labels": result.labels,
        "normalization_mean": artifacts.ModelInfo.normalization_mean,
        "normalization_std": artifacts.ModelInfo.normalization_std,
        "hyperparameters": result.hyperparameters,
    }


def train_component(
    images: Input[Dataset],
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    model_spec: str,
    backbone_uri: str,
    input_size: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    dropout_rate: float,
    l2_regularization: float,
    label_smoothing: float,
    train_whole_model: bool,
    use_augmentation: bool,
    tune_head: bool,
    seed: int,
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Train the classifier (backbone_uri "" and input_size 0 take the model spec's defaults)."""
    import logging

    from components import train as step
    from components.model_spec import get_model_spec

    spec = get_model_spec(model_spec, backbone_uri=backbone_uri, input_size=input_size)
    options = step.TrainOptions(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, momentum=momentum,
        dropout_rate=dropout_rate, l2_regularization=l2_regularization, label_smoothing=label_smoothing,
        train_whole_model=train_whole_model, use_augmentation=use_augmentation, tune_head=tune_head,
        seed=seed,
    )
    result = step.train(
        images_dir=images.path, train_dir=train_data.path, validation_dir=validation_data.path,
        output_dir=model.path, report_path=report.path, spec=spec, options=options,
    )
    for name, value in step.metric_values(result).items():
        metrics.log_metric(name, value)
    model.metadata.update(step.model_metadata(result, spec))
    logging.getLogger(__name__).info(
        "trained %s: val_accuracy %.4f after %s epochs in %.1f s (cross-validated when tune_head is on)",
        spec.name, result.history["val_accuracy"][-1], len(result.history["val_accuracy"]),
        result.total_seconds,
    )
