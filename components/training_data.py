"""Photos of a split as tf.data pipelines for training: plain, or with Model Maker's augmentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import numpy as np
import tensorflow as tf

from components import artifacts, preprocessing


@dataclasses.dataclass
class SplitData:
    """Photo paths of a split and their label indices, in manifest order."""

    paths: list[str]
    label_ids: np.ndarray

    def onehot(self, num_classes: int) -> np.ndarray:
        return np.eye(num_classes, dtype=np.float32)[self.label_ids]


def augment_image(path: tf.Tensor, seed: tf.Tensor, input_size: tuple[int, int]) -> tf.Tensor:
    """Load one photo with Model Maker's training augmentation: random crop, then random flip.

    The crop covers 8% to 100% of the photo with an aspect ratio from 3/4 to 4/3. Unlike Model
    Maker, when no crop is found in 10 attempts the whole photo is used, not a center crop.
    seed is a stateless [2] seed, so a photo gets the same crop for the same seed and epoch.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=crop_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, size)
    image.set_shape([None, None, 3])  # tf.slice drops the static channel count
    image = tf.cast(image, tf.float32) / 255.0
    image = tf.image.resize(image, input_size, method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def image_dataset(
    split: SplitData,
    *,
    num_classes: int,
    input_size: tuple[int, int],
    batch_size: int,
    order: np.ndarray | None = None,
    augment_seed: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batch (image, one-hot label) of the split's photos in order, decoded in parallel.

    With augment_seed (seed, epoch) each photo is augmented with a seed derived from it and the
    photo's index, so a run is repeatable.
    """
    if order is None:
        order = np.arange(len(split.paths))
    paths = np.asarray(split.paths)[order]
    labels = split.onehot(num_classes)[order]
    indices = order.astype(np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels, indices))
    if augment_seed is None:
        def load(path, label, index):
            return preprocessing.load_image(path, input_size), label
    else:
        seed, epoch = augment_seed
        def load(path, label, index):
            stateless_seed = tf.stack([tf.constant(seed, tf.int64), epoch * len(split.paths) + index])
            return augment_image(path, stateless_seed, input_size), label
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def read_split(images_dir: str | Path, split_dir: str | Path, labels: list[str]) -> SplitData:
    """Read a split Dataset's photo paths and label indices in manifest order."""
    rows = artifacts.read_manifest(split_dir)
    index_of = {label: index for index, label in enumerate(labels)}
    unknown = sorted({row.label for row in rows} - index_of.keys())
    if unknown:
        raise ValueError(
            f"{split_dir}: labels {unknown} are not in its labels.txt {labels}; "
            "rewrite the split with the split step so manifest and labels agree"
        )
    label_ids = np.array([index_of[row.label] for row in rows], dtype=np.int64)
    return SplitData(paths=artifacts.image_paths(images_dir, rows), label_ids=label_ids)


