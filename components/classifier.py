"""The classifier of Model Maker's recipe: a TF Hub backbone, Dropout and a softmax Dense head."""

from __future__ import annotations

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import tensorflow as tf
import tf_keras

from components.train_options import TrainOptions


def build_head_layers(
    num_classes: int, options: TrainOptions
) -> tuple[tf_keras.layers.Dropout, tf_keras.layers.Dense]:
    """Create the classification head: Dropout, then a softmax Dense layer, both seeded."""
    dropout = tf_keras.layers.Dropout(options.dropout_rate, seed=options.seed)
    dense = tf_keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_regularizer=tf_keras.regularizers.l2(options.l2_regularization),
        kernel_initializer=tf_keras.initializers.GlorotUniform(seed=options.seed),
    )
    return dropout, dense


def build_classifier(
    backbone: tf_keras.layers.Layer,
    *,
    input_size: tuple[int, int],
    dropout: tf_keras.layers.Dropout,
    dense: tf_keras.layers.Dense,
) -> tf_keras.Model:
    """Assemble Input -> backbone -> Dropout -> Dense."""
    inputs = tf_keras.Input(shape=(*input_size, 3), dtype=tf.float32)
    outputs = dense(dropout(backbone(inputs)))
    return tf_keras.Model(inputs, outputs)


def build_head_model(
    feature_dim: int, *, dropout: tf_keras.layers.Dropout, dense: tf_keras.layers.Dense
) -> tf_keras.Model:
    """Wrap the head layers in a model over backbone features; it shares their weights."""
    inputs = tf_keras.Input(shape=(feature_dim,), dtype=tf.float32)
    return tf_keras.Model(inputs, dense(dropout(inputs)))


def build_head(num_classes: int, *, feature_dim: int, options: TrainOptions) -> tf_keras.Model:
    """Create a compiled head model over backbone features, with the options' hyperparameters."""
    dropout, dense = build_head_layers(num_classes, options)
    head = build_head_model(feature_dim, dropout=dropout, dense=dense)
    compile_for_training(head, options)
    return head


def compile_for_training(model: tf_keras.Model, options: TrainOptions) -> None:
    """Compile with Model Maker's loss and optimizer: smoothed cross-entropy, SGD with momentum."""
    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate=options.learning_rate, momentum=options.momentum),
        loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
        metrics=["accuracy"],
    )


