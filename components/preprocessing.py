"""Image preprocessing of TFLite Model Maker's image classifier, shared by training and evaluation.

A photo is decoded to 8-bit RGB, scaled to float32 in [0, 1], then resized bilinearly to the
model's input size. The model itself contains no preprocessing, so an app feeds it the same way.
"""

from __future__ import annotations

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import tensorflow as tf


def load_image(path: tf.Tensor, input_size: tuple[int, int]) -> tf.Tensor:
    """Read one image file into a float32 [height, width, 3] tensor in [0, 1]."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.cast(image, tf.float32) / 255.0
    return tf.image.resize(image, input_size, method="bilinear")
