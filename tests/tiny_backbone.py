"""A tiny random image feature-vector model in the TF Hub SavedModel form, for fast tests.

It has what tensorflow_hub.KerasLayer needs of a TF2 SavedModel: a __call__(images, training)
function and the variables, trainable_variables and regularization_losses attributes.
"""

from __future__ import annotations

from pathlib import Path

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import tensorflow as tf


class _TinyFeatureVector(tf.__internal__.tracking.AutoTrackable):
    # AutoTrackable rather than tf.Module: tf.Module defines variables and trainable_variables
    # as read-only properties, and KerasLayer looks for them as plain saved attributes.
    def __init__(self, *, feature_dim: int, seed: int):
        self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, feature_dim], seed=[seed, 0]))
        self.bias = tf.Variable(tf.zeros([feature_dim]))
        self.variables = [self.kernel, self.bias]
        self.trainable_variables = [self.kernel, self.bias]
        self.regularization_losses = []

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32),
        tf.TensorSpec([], tf.bool),
    ])
    def __call__(self, images, training=False):
        del training  # the model has no batch norm or dropout
        features = tf.nn.conv2d(images, self.kernel, strides=4, padding="SAME") + self.bias
        return tf.reduce_mean(tf.nn.relu(features), axis=[1, 2])


def save_tiny_backbone(path: str | Path, *, feature_dim: int = 8, seed: int = 0) -> Path:
    """Save a random conv + pool feature extractor to path; returns the path."""
    tf.saved_model.save(_TinyFeatureVector(feature_dim=feature_dim, seed=seed), str(path))
    return Path(path)
