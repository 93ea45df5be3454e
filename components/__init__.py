"""Steps of the image-classifier pipeline: plain functions plus thin KFP component wrappers."""

import os

# tensorflow_hub.KerasLayer builds tf-keras layers, and TFLiteConverter.from_keras_model needs
# tf.keras to be tf-keras too; TensorFlow reads this variable once, when it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
