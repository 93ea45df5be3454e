"""Tests of the train step on real photos of the mini archive with a tiny random backbone."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from kfp import dsl
from PIL import Image

from components import artifacts, classifier, features, train, training_data, tuning
from components.model_spec import get_model_spec
from components.train_options import TrainOptions, validate_train_options
from tests.conftest import MINI_ARCHIVE
from tests.tiny_backbone import save_tiny_backbone

TRAIN_PER_CLASS = 12
VALIDATION_PER_CLASS = 4
INPUT_SIZE = 32
FLOWER_LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@dataclasses.dataclass(frozen=True)
class Splits:
    images_dir: Path
    train_dir: Path
    validation_dir: Path
    test_dir: Path


def build_mini_splits(root: Path) -> Splits:
    """Extract the mini archive under root and write train/validation/test split folders.

    Per class, in file-name order: 12 train, 4 validation and the rest (4) test photos.
    """
    images_dir = root / "images_dataset"
    with tarfile.open(MINI_ARCHIVE) as archive:
        archive.extractall(images_dir, filter="data")
    class_dirs = sorted(path for path in (images_dir / "flower_photos").iterdir() if path.is_dir())
    labels = [path.name for path in class_dirs]
    rows_by_split: dict[str, list[artifacts.ManifestRow]] = {"train": [], "validation": [], "test": []}
    for class_dir in class_dirs:
        for position, photo in enumerate(sorted(class_dir.glob("*.jpg"))):
            split = "train" if position < TRAIN_PER_CLASS else (
                "validation" if position < TRAIN_PER_CLASS + VALIDATION_PER_CLASS else "test")
            rows_by_split[split].append(_manifest_row(images_dir, photo, class_dir.name))
    for split, rows in rows_by_split.items():
        split_dir = root / split
        split_dir.mkdir()
        artifacts.write_manifest(split_dir / artifacts.MANIFEST_FILE, rows)
        artifacts.write_labels(split_dir / artifacts.LABELS_FILE, labels)
    return Splits(images_dir, root / "train", root / "validation", root / "test")


def _manifest_row(images_dir: Path, photo: Path, label: str) -> artifacts.ManifestRow:
    with Image.open(photo) as image:
        width, height = image.size
    relative = photo.relative_to(images_dir).as_posix()
    return artifacts.ManifestRow(
        path=relative, label=label, sha256=hashlib.sha256(photo.read_bytes()).hexdigest(),
        width=width, height=height, source=relative,
    )


def tiny_spec(backbone_dir: Path):
    return get_model_spec("custom", backbone_uri=str(backbone_dir), input_size=INPUT_SIZE)


def run_train(splits: Splits, root: Path, spec, **option_values) -> train.TrainResult:
    options = TrainOptions(**{"batch_size": 16, "epochs": 1, **option_values})
    return train.train(
        images_dir=splits.images_dir, train_dir=splits.train_dir, validation_dir=splits.validation_dir,
        output_dir=root / "model", report_path=root / "report.md", spec=spec, options=options,
    )


def dense_weights(model_dir: str) -> list[np.ndarray]:
    model = tf_keras.models.load_model(str(Path(model_dir) / artifacts.SAVED_MODEL_DIR), compile=False)
    return [weight.numpy() for weight in model.layers[-1].weights]


@pytest.fixture(scope="module")
def splits(tmp_path_factory, mini_archive) -> Splits:
    return build_mini_splits(tmp_path_factory.mktemp("splits"))


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny", feature_dim=8)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory) -> tuple[train.TrainResult, Path]:
    """A 3-epoch run on its own backbone copy, which a test may rename."""
    root = tmp_path_factory.mktemp("trained")
    spec = tiny_spec(save_tiny_backbone(root / "backbone", feature_dim=8))
    return run_train(splits, root, spec, epochs=3), root / "backbone"


@pytest.fixture(scope="module")
def one_epoch_runs(splits, backbone_dir, tmp_path_factory) -> dict[str, train.TrainResult]:
    """One epoch, dropout 0, seed 3: features in memory, features on disk, and end to end."""
    spec = tiny_spec(backbone_dir)
    common = {"dropout_rate": 0.0, "seed": 3}
    return {
        "in_memory": run_train(splits, tmp_path_factory.mktemp("in_memory"), spec, **common),
        "spilled": run_train(splits, tmp_path_factory.mktemp("spilled"), spec, feature_memory_bytes=0, **common),
        "end_to_end": run_train(splits, tmp_path_factory.mktemp("end_to_end"), spec, cache_features=False, **common),
    }


INVALID_OPTIONS = [
    ("epochs", 0, r"epochs=0 is out of range: expected an integer with 1 <= epochs <= 1000"),
    ("epochs", 2.5, r"epochs=2.5 is invalid: expected an integer"),
    ("batch_size", 0, r"batch_size=0 is out of range: .*set batch_size within that range \(default 32\)"),
    ("learning_rate", 0.0,
     r"learning_rate=0.0 is out of range: expected a number with 0.0 < learning_rate <= 1.0; set learning_rate"),
    ("learning_rate", 1.5, r"learning_rate=1.5 is out of range: .*learning_rate <= 1.0"),
    ("momentum", 1.0, r"momentum=1.0 is out of range: .*momentum < 1.0"),
    ("momentum", -0.1, r"momentum=-0.1 is out of range: expected a number with 0.0 <= momentum < 1.0"),
    ("dropout_rate", 1.0, r"dropout_rate=1.0 is out of range: .*0.0 <= dropout_rate < 1.0; .*\(default 0.2\)"),
    ("l2_regularization", -1e-4, r"l2_regularization=-0.0001 is out of range"),
    ("label_smoothing", 1.0, r"label_smoothing=1.0 is out of range: .*label_smoothing < 1.0"),
    ("seed", -1, r"seed=-1 is out of range: expected an integer with 0 <= seed <= 2147483647"),
    ("feature_memory_bytes", -1, r"feature_memory_bytes=-1 is out of range"),
    ("learning_rate", float("nan"), r"learning_rate=nan is out of range"),
    ("learning_rate", "0.01", r"learning_rate='0.01' is invalid: expected a number"),
    ("epochs", True, r"epochs=True is invalid: expected an integer"),
    ("train_whole_model", 1, r"train_whole_model=1 is invalid: allowed values are True and False"),
]


@pytest.mark.parametrize(
    ("name", "value", "message"), INVALID_OPTIONS, ids=[f"{name}={value!r}" for name, value, _ in INVALID_OPTIONS]
)
def test_validate_options_rejects_invalid_value(name, value, message):
    with pytest.raises(ValueError, match=message):
        validate_train_options(dataclasses.replace(TrainOptions(), **{name: value}))


@pytest.mark.parametrize("conflict", ["train_whole_model", "use_augmentation"])
def test_validate_options_rejects_tuning_without_cache(conflict):
    options = TrainOptions(tune_head=True, **{conflict: True})
    with pytest.raises(ValueError, match=r"tune_head=True is invalid with train_whole_model=.*set tune_head=False"):
        validate_train_options(options)


def test_validate_options_rejects_tuning_with_cache_off():
    with pytest.raises(ValueError, match=r"tune_head=True is invalid with cache_features=False"):
        validate_train_options(TrainOptions(tune_head=True, cache_features=False))


def test_validate_options_accepts_defaults():
    validate_train_options(TrainOptions())
    validate_train_options(TrainOptions(dropout_rate=0.0, momentum=0.0, label_smoothing=0.0, tune_head=True))


def test_train_rejects_batch_larger_than_split(splits, backbone_dir, tmp_path):
    with pytest.raises(ValueError, match=r"the train split has 60 photos, fewer than batch_size=64; set a smaller"):
        run_train(splits, tmp_path, tiny_spec(backbone_dir), batch_size=64)
    assert not (tmp_path / "model").exists()


def test_train_rejects_nonempty_output(splits, backbone_dir, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match=r"output folder .*model exists and is not empty; pass a new or empty"):
        run_train(splits, tmp_path, tiny_spec(backbone_dir))


def test_train_rejects_invalid_options_first(splits, tmp_path):
    missing_backbone = tiny_spec(tmp_path / "no_such_backbone")
    with pytest.raises(ValueError, match=r"epochs=0 is out of range"):
        run_train(splits, tmp_path, missing_backbone, epochs=0)


def test_train_rejects_labels_mismatch(splits, backbone_dir, tmp_path):
    validation_dir = tmp_path / "validation"
    validation_dir.mkdir()
    rows = artifacts.read_manifest(splits.validation_dir)
    artifacts.write_manifest(validation_dir / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(validation_dir / artifacts.LABELS_FILE, ["daisy", "roses"])
    with pytest.raises(ValueError, match=r"labels.txt differs between the train split"):
        train.train(
            images_dir=splits.images_dir, train_dir=splits.train_dir, validation_dir=validation_dir,
            output_dir=tmp_path / "model", report_path=tmp_path / "report.md",
            spec=tiny_spec(backbone_dir), options=TrainOptions(batch_size=16),
        )


@pytest.mark.slow
def test_train_writes_complete_model_folder(trained):
    result, _ = trained
    model_dir = Path(result.model_dir)
    assert (model_dir / artifacts.SAVED_MODEL_DIR / "saved_model.pb").is_file()
    assert artifacts.read_labels(model_dir) == FLOWER_LABELS
    info = artifacts.read_model_info(model_dir)
    assert (info.model_spec, info.input_height, info.input_width) == ("custom", INPUT_SIZE, INPUT_SIZE)
    assert (info.normalization_mean, info.normalization_std) == (0.0, 255.0)
    assert info.hyperparameters["epochs"] == 3
    assert (info.num_train_images, info.num_validation_images) == (60, 20)
    assert [path.name for path in model_dir.parent.iterdir() if ".partial-" in path.name] == []


@pytest.mark.slow
def test_train_history_has_every_epoch(trained):
    result, _ = trained
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key, values in result.history.items():
        assert len(values) == 3, key
        assert all(np.isfinite(values)), key


@pytest.mark.slow
def test_train_report_has_curves_and_epochs(trained):
    result, _ = trained
    report = Path(result.report_path).read_text(encoding="utf-8")
    assert "![loss and accuracy per epoch](data:image/png;base64," in report
    assert "| 3 | " in report
    assert "Head tuning trials" not in report


@pytest.mark.slow
def test_saved_model_reloads_without_backbone(trained, splits):
    result, backbone = trained
    saved_model = str(Path(result.model_dir) / artifacts.SAVED_MODEL_DIR)
    photos = tf.stack([
        tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(path)), (INPUT_SIZE, INPUT_SIZE)) / 255.0
        for path in training_data.read_split(splits.images_dir, splits.test_dir, result.labels).paths[:4]
    ])
    expected = tf_keras.models.load_model(saved_model).predict(photos, verbose=0)
    moved = backbone.with_name("backbone_moved")
    backbone.rename(moved)
    try:
        reloaded = tf_keras.models.load_model(saved_model)
        np.testing.assert_allclose(reloaded.predict(photos, verbose=0), expected, atol=1e-6)
    finally:
        moved.rename(backbone)


@pytest.mark.slow
def test_features_once_matches_end_to_end(one_epoch_runs):
    cached, end_to_end = one_epoch_runs["in_memory"], one_epoch_runs["end_to_end"]
    assert cached.used_feature_cache
    assert not end_to_end.used_feature_cache
    for cached_weight, end_to_end_weight in zip(dense_weights(cached.model_dir), dense_weights(end_to_end.model_dir)):
        np.testing.assert_allclose(cached_weight, end_to_end_weight, atol=1e-5)
    np.testing.assert_allclose(cached.history["val_loss"], end_to_end.history["val_loss"], atol=1e-5)


@pytest.mark.slow
def test_features_once_moves_head_weights(one_epoch_runs, splits, backbone_dir, tmp_path):
    untrained = run_train(splits, tmp_path, tiny_spec(backbone_dir), dropout_rate=0.0, seed=3, learning_rate=1e-9)
    trained_kernel = dense_weights(one_epoch_runs["in_memory"].model_dir)[0]
    assert not np.allclose(trained_kernel, dense_weights(untrained.model_dir)[0], atol=1e-5)


@pytest.mark.slow
def test_spilled_features_train_same_head(one_epoch_runs):
    in_memory, spilled = one_epoch_runs["in_memory"], one_epoch_runs["spilled"]
    assert spilled.features_spilled
    assert not in_memory.features_spilled
    for memory_weight, spilled_weight in zip(dense_weights(in_memory.model_dir), dense_weights(spilled.model_dir)):
        np.testing.assert_array_equal(memory_weight, spilled_weight)


def test_extract_features_spill_matches_memory(splits, backbone_dir, tmp_path):
    backbone = train.load_backbone_layer(tiny_spec(backbone_dir), trainable=False)
    paths = training_data.read_split(splits.images_dir, splits.validation_dir, FLOWER_LABELS).paths
    kwargs = {"input_size": (INPUT_SIZE, INPUT_SIZE), "batch_size": 6}
    in_memory = features.extract_features(
        backbone, paths, memory_budget_bytes=10**9, spill_path=tmp_path / "a.npy", **kwargs
    )
    spilled = features.extract_features(
        backbone, paths, memory_budget_bytes=100, spill_path=tmp_path / "b.npy", **kwargs
    )
    assert not isinstance(in_memory, np.memmap)
    assert isinstance(spilled, np.memmap)
    assert (tmp_path / "b.npy").is_file()
    assert not (tmp_path / "a.npy").exists()
    assert in_memory.shape == (20, 8)
    np.testing.assert_array_equal(np.asarray(spilled), in_memory)


def test_epoch_order_repeats_per_seed():
    first = features.epoch_order(50, seed=7, epoch=0)
    assert np.array_equal(first, features.epoch_order(50, seed=7, epoch=0))
    assert not np.array_equal(first, features.epoch_order(50, seed=7, epoch=1))
    assert not np.array_equal(first, features.epoch_order(50, seed=8, epoch=0))
    assert sorted(first) == list(range(50))


@pytest.mark.slow
def test_fine_tuning_changes_backbone(splits, tmp_path):
    backbone = save_tiny_backbone(tmp_path / "backbone", feature_dim=8)
    original_kernel = tf.saved_model.load(str(backbone)).kernel.numpy()
    result = run_train(splits, tmp_path, tiny_spec(backbone), train_whole_model=True, learning_rate=0.05)
    assert not result.used_feature_cache
    checkpoint = str(Path(result.model_dir) / artifacts.SAVED_MODEL_DIR / "variables" / "variables")
    kernel_names = [name for name, shape in tf.train.list_variables(checkpoint) 
                    if shape == list(original_kernel.shape) and not name.startswith("optimizer/")]
    assert len(kernel_names) == 1
    assert not np.allclose(tf.train.load_variable(checkpoint, kernel_names[0]), original_kernel)


@pytest.mark.slow
def test_augmentation_path_trains(splits, backbone_dir, tmp_path):
    result = run_train(splits, tmp_path, tiny_spec(backbone_dir), use_augmentation=True, epochs=2)
    assert not result.used_feature_cache
    assert len(result.history["loss"]) == 2
    assert (Path(result.model_dir) / artifacts.SAVED_MODEL_DIR / "saved_model.pb").is_file()


def test_augment_image_repeats_per_seed(splits):
    path = training_data.read_split(splits.images_dir, splits.train_dir, FLOWER_LABELS).paths[0]
    def augment(seed: list[int]) -> np.ndarray:
        return training_data.augment_image(path, tf.constant(seed, tf.int64), (48, 40)).numpy()

    first = augment([1, 2])
    assert first.shape == (48, 40, 3)
    assert first.min() >= 0.0
    assert first.max() <= 1.0
    np.testing.assert_array_equal(first, augment([1, 2]))
    assert not np.array_equal(first, augment([1, 3]))


SMALL_GRID = {
    "LEARNING_RATES": (0.001, 0.1),
    "EPOCH_COUNTS": (1, 3),
    "DROPOUT_RATES": (0.0, 0.5),
    "L2_REGULARIZATIONS": (0.0001,),
    "LABEL_SMOOTHINGS": (0.0, 0.1),
}


@pytest.fixture
def small_grid(monkeypatch):
    """A 2 x 2 x 2 x 1 x 2 grid of the same shape as the real one, with 3 folds, to keep tests fast."""
    for name, values in SMALL_GRID.items():
        monkeypatch.setattr(tuning, name, values)
    monkeypatch.setattr(tuning, "NUM_FOLDS", 3)


def synthetic_features(num_rows: int, *, seed: int, num_classes: int = 3, feature_dim: int = 6):
    """Features in [0, 1] around one center per class, with balanced one-hot labels."""
    rng = np.random.default_rng(seed)
    class_ids = np.arange(num_rows) % num_classes
    centers = rng.uniform(0.2, 0.8, size=(num_classes, feature_dim))
    values = np.clip(centers[class_ids] + rng.normal(0.0, 0.15, size=(num_rows, feature_dim)), 0.0, 1.0)
    return values.astype(np.float32), np.eye(num_classes, dtype=np.float32)[class_ids]


def test_stratified_folds_balance_classes():
    _, labels = synthetic_features(23, seed=0)
    fold_ids = tuning.stratified_folds(labels, num_folds=4, seed=5)
    assert sorted(set(fold_ids)) == [0, 1, 2, 3]
    fold_sizes = np.bincount(fold_ids)
    assert fold_sizes.max() - fold_sizes.min() <= 1
    for class_id in range(3):
        per_fold = np.bincount(fold_ids[labels[:, class_id] == 1], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, class_id


def test_stratified_folds_repeat_per_seed():
    _, labels = synthetic_features(30, seed=0)
    first = tuning.stratified_folds(labels, num_folds=5, seed=1)
    np.testing.assert_array_equal(first, tuning.stratified_folds(labels, num_folds=5, seed=1))
    assert not np.array_equal(first, tuning.stratified_folds(labels, num_folds=5, seed=2))


def test_stratified_folds_rejects_too_many_folds():
    _, labels = synthetic_features(4, seed=0)
    with pytest.raises(ValueError, match=r"num_folds=5 is invalid for 4 photos: expected 2 <= num_folds"):
        tuning.stratified_folds(labels, num_folds=5, seed=0)


def test_fold_rows_hold_out_each_row_once():
    _, labels = synthetic_features(31, seed=0)
    train_rows, heldout_rows = tuning.fold_rows(labels, num_folds=5, seed=0)
    assert len(train_rows) == len(heldout_rows) == 5
    assert sorted(np.concatenate(heldout_rows).tolist()) == list(range(31))
    for train_part, heldout_part in zip(train_rows, heldout_rows):
        assert sorted([*train_part, *heldout_part]) == list(range(31))


def test_final_head_matches_keras_fit():
    # 40 rows in batches of 16 end each epoch with a partial batch of 8.
    values, labels = synthetic_features(40, seed=1)
    options = TrainOptions(epochs=3, batch_size=16, learning_rate=0.05, dropout_rate=0.0,
                           l2_regularization=0.001, label_smoothing=0.1, seed=4)
    fast = tuning.fit_final_head(values, labels, options=options)

    keras_head = classifier.build_head(3, feature_dim=6, options=options)
    all_rows = features.FeatureSet(values, labels)
    history = features.fit_head(keras_head, all_rows, all_rows, epochs=3, batch_size=16, seed=4)
    kernel, bias = keras_head.layers[-1].get_weights()
    np.testing.assert_allclose(fast.kernel, kernel, atol=1e-5)
    np.testing.assert_allclose(fast.bias, bias, atol=1e-5)
    np.testing.assert_allclose(fast.history["loss"], history["loss"], atol=1e-5)
    np.testing.assert_allclose(fast.history["accuracy"], history["accuracy"], atol=1e-6)


def test_head_groups_train_as_if_alone():
    # With batch 16, group 0 (33 rows) takes 3 steps per epoch and group 1 (20 rows) takes 2.
    values, labels = synthetic_features(60, seed=2)
    options = TrainOptions(batch_size=16, seed=0)
    groups = tuning._HeadGroups((0.0, 0.5), (0.01, 0.1), (0.0001, 0.01), (0.1, 0.0))
    row_lists = [np.arange(33), np.arange(33, 53)]
    heldout = [np.arange(53, 60), np.arange(53, 60)]
    together = tuning.train_head_groups(
        values, labels, train_rows=row_lists, heldout_rows=heldout, groups=groups, epochs=2, options=options)
    for group, rows in enumerate(row_lists):
        alone = tuning.train_head_groups(
            values, labels, train_rows=[rows], heldout_rows=[heldout[group]], groups=groups, epochs=2,
            options=options)
        np.testing.assert_allclose(together.kernel[group], alone.kernel[0], atol=1e-6)
        np.testing.assert_allclose(together.heldout_loss_sum[:, group], alone.heldout_loss_sum[:, 0], atol=1e-5)


def test_head_groups_differ_by_hyperparameter():
    values, labels = synthetic_features(40, seed=2)
    groups = tuning._HeadGroups((0.0, 0.5), (0.01, 0.1), (0.0001, 0.0001), (0.1, 0.1))
    totals = tuning.train_head_groups(
        values, labels, train_rows=[np.arange(32)], heldout_rows=[np.arange(32, 40)], groups=groups,
        epochs=1, options=TrainOptions(batch_size=16))
    assert not np.allclose(totals.kernel[0, 0, 0], totals.kernel[0, 1, 0])
    assert not np.allclose(totals.kernel[0, 0, 0], totals.kernel[0, 0, 1])


def test_tune_head_repeats_per_seed(small_grid):
    train_values, train_labels = synthetic_features(48, seed=3)
    validation_values, validation_labels = synthetic_features(12, seed=4)
    train_set = features.FeatureSet(train_values, train_labels)
    validation_set = features.FeatureSet(validation_values, validation_labels)
    options = TrainOptions(batch_size=16, tune_head=True)
    first = tuning.tune_head(train_set, validation_set, options=options)
    second = tuning.tune_head(train_set, validation_set, options=options)
    assert first.trials == second.trials
    np.testing.assert_array_equal(first.head.kernel, second.head.kernel)


def test_tune_head_scores_train_and_validation(small_grid):
    train_values, train_labels = synthetic_features(48, seed=3)
    validation_values, validation_labels = synthetic_features(12, seed=4)
    result = tuning.tune_head(
        features.FeatureSet(train_values, train_labels),
        features.FeatureSet(validation_values, validation_labels),
        options=TrainOptions(batch_size=16, tune_head=True),
    )
    assert len(result.trials) == 16
    # Pooled over the 60 held-out rows, every accuracy is a whole number of photos out of 60.
    for trial in result.trials:
        assert trial.cv_accuracy * 60 == pytest.approx(round(trial.cv_accuracy * 60), abs=1e-6)
    best = tuning.best_trial(result.trials)
    assert result.head.history["val_accuracy"][-1] == best.cv_accuracy
    assert len(result.head.history["loss"]) == best.epochs


def test_tune_head_fits_final_head_on_both_splits(small_grid):
    train_values, train_labels = synthetic_features(48, seed=3)
    validation_values, validation_labels = synthetic_features(12, seed=4)
    result = tuning.tune_head(
        features.FeatureSet(train_values, train_labels),
        features.FeatureSet(validation_values, validation_labels),
        options=TrainOptions(batch_size=16, tune_head=True),
    )
    both = tuning.fit_final_head(
        np.concatenate([train_values, validation_values]), np.concatenate([train_labels, validation_labels]),
        options=result.options,
    )
    train_only = tuning.fit_final_head(train_values, train_labels, options=result.options)
    np.testing.assert_array_equal(result.head.kernel, both.kernel)
    assert not np.allclose(result.head.kernel, train_only.kernel)


@pytest.mark.slow
def test_tuning_records_trials_and_keeps_best(splits, backbone_dir, tmp_path, small_grid):
    result = run_train(splits, tmp_path, tiny_spec(backbone_dir), tune_head=True)
    assert len(result.trials) == 16
    grid_points = {
        (t.learning_rate, t.epochs, t.dropout_rate, t.l2_regularization, t.label_smoothing) for t in result.trials
    }
    assert grid_points == set(itertools.product(*SMALL_GRID.values()))
    best = tuning.best_trial(result.trials)
    assert best.cv_accuracy == max(trial.cv_accuracy for trial in result.trials)
    names = ("learning_rate", "epochs", "dropout_rate", "l2_regularization", "label_smoothing")
    chosen = tuple(result.hyperparameters[name] for name in names)
    assert chosen == (best.learning_rate, best.epochs, best.dropout_rate, best.l2_regularization,
                      best.label_smoothing)
    assert len(result.history["loss"]) == best.epochs
    assert result.history["val_accuracy"][-1] == pytest.approx(best.cv_accuracy)
    assert "trial_16_cv_accuracy" in train.metric_values(result)
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert report.count("| chosen |") == 1


def test_best_trial_breaks_ties_by_loss():
    trials = [
        tuning.TuningTrial(0.001, 5, 0.0, 0.0001, 0.1, cv_accuracy=0.9, cv_loss=0.5),
        tuning.TuningTrial(0.005, 5, 0.0, 0.0001, 0.1, cv_accuracy=0.9, cv_loss=0.4),
        tuning.TuningTrial(0.01, 5, 0.0, 0.0001, 0.1, cv_accuracy=0.8, cv_loss=0.1),
    ]
    assert tuning.best_trial(trials) is trials[1]


def test_best_trial_breaks_full_ties_by_grid_order():
    trials = [
        tuning.TuningTrial(0.01, 5, 0.0, 0.0001, 0.1, cv_accuracy=0.9, cv_loss=0.4),
        tuning.TuningTrial(0.001, 5, 0.0, 0.0001, 0.1, cv_accuracy=0.9, cv_loss=0.4),
    ]
    assert tuning.best_trial(trials) is trials[0]


def test_best_trial_rejects_empty_grid():
    with pytest.raises(ValueError, match=r"no tuning trials to choose from"):
        tuning.best_trial([])


@pytest.mark.slow
def test_metric_values_flatten_history(trained):
    result, _ = trained
    values = train.metric_values(result)
    assert values["epoch_3_val_accuracy"] == result.history["val_accuracy"][2]
    assert values["final_loss"] == result.history["loss"][-1]
    assert values["num_train_images"] == 60.0


@pytest.mark.slow
def test_train_component_records_metadata(splits, backbone_dir, tmp_path):
    model = dsl.Model(uri=str(tmp_path / "model"))
    metrics = dsl.Metrics(uri=str(tmp_path / "metrics"))
    report = dsl.Markdown(uri=str(tmp_path / "report.md"))
    train.train_component(
        images=dsl.Dataset(uri=str(splits.images_dir)), train_data=dsl.Dataset(uri=str(splits.train_dir)),
        validation_data=dsl.Dataset(uri=str(splits.validation_dir)), model_spec="custom",
        backbone_uri=str(backbone_dir), input_size=INPUT_SIZE, epochs=2, batch_size=16, learning_rate=0.005,
        momentum=0.9, dropout_rate=0.2, l2_regularization=0.0001, label_smoothing=0.1, train_whole_model=False,
        use_augmentation=False, tune_head=False, seed=0, model=model, metrics=metrics, report=report,
    )
    assert (tmp_path / "model" / artifacts.MODEL_INFO_FILE).is_file()
    assert (tmp_path / "report.md").is_file()
    assert "epoch_2_val_accuracy" in metrics.metadata
    assert model.metadata["labels"] == FLOWER_LABELS
    assert model.metadata["input_height"] == INPUT_SIZE


def test_train_component_builds_kfp_component():
    component = dsl.component(train.train_component, base_image="unused", install_kfp_package=False)
    assert "validation_data" in component.component_spec.inputs
    assert set(component.component_spec.outputs) == {"model", "metrics", "report"}
