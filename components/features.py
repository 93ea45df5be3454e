"""Backbone features computed once per photo, and head training on them.

With a frozen backbone and no augmentation, every epoch of Model Maker's recipe feeds the same
photos through the same backbone and gets the same features. Computing them once and training
the head (Dropout + Dense) on the stored features gives the same model in a fraction of the time.

Features of a split stay in RAM while they fit the memory budget. Past it they go to a float32
.npy file opened as a numpy memmap, so RAM use stays bounded by the budget plus one batch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras

from components import preprocessing

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclasses.dataclass
class FeatureSet:
    """Backbone outputs of one split, with the one-hot labels in the same row order."""

    features: np.ndarray  # [num_images, feature_dim] float32; an np.memmap when spilled to disk
    onehot_labels: np.ndarray  # [num_images, num_classes] float32

    @property
    def spilled(self) -> bool:
        return isinstance(self.features, np.memmap)


def allocate_features(
    num_rows: int, feature_dim: int, *, memory_budget_bytes: int, spill_path: Path
) -> np.ndarray:
    """Return a zeroed float32 [num_rows, feature_dim] array in RAM, or on disk past the budget."""
    size_bytes = num_rows * feature_dim * np.dtype(np.float32).itemsize
    if size_bytes <= memory_budget_bytes:
        return np.zeros((num_rows, feature_dim), dtype=np.float32)
    logger.info(
        "features of %s images take %s bytes, more than the %s-byte memory budget: spilling to %s",
        num_rows, size_bytes, memory_budget_bytes, spill_path,
    )
    return np.lib.format.open_memmap(
        spill_path, mode="w+", dtype=np.float32, shape=(num_rows, feature_dim)
    )


def extract_features(
    backbone: tf_keras.layers.Layer,
    paths: Sequence[str],
    *,
    input_size: tuple[int, int],
    batch_size: int,
    memory_budget_bytes: int,
    spill_path: Path,
) -> np.ndarray:
    """Run the backbone once over the photos at paths, in order, and return [len(paths), dim] features."""
    dataset = (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .map(lambda path: preprocessing.load_image(path, input_size), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    # training=False: a frozen backbone's batch norm uses its stored statistics, as it does
    # when Keras trains the whole model with the backbone's trainable flag off.
    forward = tf.function(lambda images: backbone(images, training=False), reduce_retracing=True)

    store = None
    row = 0
    for images in dataset:
        batch = forward(images).numpy()
        if store is None:
            store = allocate_features(
                len(paths), batch.shape[1], memory_budget_bytes=memory_budget_bytes, spill_path=spill_path
            )
        store[row:row + len(batch)] = batch
        row += len(batch)
    if store is None:
        raise ValueError("no photos to compute features for: the split's manifest is empty")
    if isinstance(store, np.memmap):
        store.flush()
    return store


def epoch_order(num_images: int, *, seed: int, epoch: int) -> np.ndarray:
    """Return the shuffled order of the training photos in one epoch, the same for every path."""
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def feature_dataset(
    feature_set: FeatureSet, *, batch_size: int, order: np.ndarray | None = None
) -> tf.data.Dataset:
    """Batch (features, one-hot labels) in order, reading one batch at a time from RAM or disk."""
    if order is None:
        order = np.arange(len(feature_set.features))
    feature_dim = feature_set.features.shape[1]
    num_classes = feature_set.onehot_labels.shape[1]

    def batches():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield feature_set.features[rows], feature_set.onehot_labels[rows]

    signature = (
        tf.TensorSpec([None, feature_dim], tf.float32),
        tf.TensorSpec([None, num_classes], tf.float32),
    )
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def fit_epochs(
    model: tf_keras.Model,
    *,
    train_dataset_for: Callable[[int, np.ndarray], tf.data.Dataset],
    validation_data: tf.data.Dataset,
    num_train_images: int,
    epochs: int,
    seed: int,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Train a compiled model for epochs; returns the per-epoch history.

    Each epoch is one model.fit call over train_dataset_for(epoch, order), where order is that
    epoch's shuffled photo order, so the features path and the end-to-end path see the same
    batches. on_epoch_end(epoch) runs after every epoch, with epoch counted from 1.
    """
    history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
    for epoch in range(epochs):
        order = epoch_order(num_train_images, seed=seed, epoch=epoch)
        result = model.fit(
            train_dataset_for(epoch, order),
            epochs=epoch + 1,
            initial_epoch=epoch,
            validation_data=validation_data,
            verbose=0,
        )
        for key in HISTORY_KEYS:
            history[key].append(float(result.history[key][-1]))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    return history


def fit_head(
    head: tf_keras.Model,
    train_set: FeatureSet,
    validation_set: FeatureSet,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Train a compiled head (Dropout + Dense) on stored features; returns the per-epoch history."""
    return fit_epochs(
        head,
        train_dataset_for=lambda epoch, order: feature_dataset(train_set, batch_size=batch_size, order=order),
        validation_data=feature_dataset(validation_set, batch_size=batch_size),
        num_train_images=len(train_set.features),
        epochs=epochs,
        seed=seed,
        on_epoch_end=on_epoch_end,
    )
