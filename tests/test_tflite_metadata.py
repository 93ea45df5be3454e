"""Tests of the TFLite Model Metadata writer, read back by the schema classes and by MediaPipe Tasks."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb

from components import artifacts, export, tflite_eval, tflite_metadata
from tests.conftest import PRETRAINED_BACKBONE
from tests.test_export import (  # noqa: F401  (pytest finds the imported fixtures by name)
    exports,
    flower_dataset,
    tiny_model_dir,
)

SAMPLE = tflite_metadata.ClassifierMetadata(
    name="flowers", description="Flower classifier.", version="20261204T211500Z-1a2b3c4d",
    author="Test Author", license="Apache-2.0", labels_file_name="labels.txt",
    normalization_mean=0.0, normalization_std=255.0, input_min=0.0, input_max=255.0,
)


def _parse(info: tflite_metadata.ClassifierMetadata) -> meta_fb.ModelMetadataT:
    return meta_fb.ModelMetadataT.InitFromPackedBuf(tflite_metadata.build_metadata(info), 0)


def _classify_with_mediapipe(model_path: Path, photo: Path) -> list[str]:
    """Return the category names that MediaPipe's ImageClassifier gives a photo, best first."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model_path)))
    with vision.ImageClassifier.create_from_options(options) as classifier:
        result = classifier.classify(mp.Image.create_from_file(str(photo)))
    return [category.category_name for category in result.classifications[0].categories]


def test_build_metadata_has_file_identifier():
    data = tflite_metadata.build_metadata(SAMPLE)
    assert meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(data, 0)


def test_build_metadata_model_fields_round_trip():
    parsed = _parse(SAMPLE)
    fields = (parsed.name, parsed.description, parsed.version, parsed.author, parsed.license)
    assert fields == (b"flowers", b"Flower classifier.", b"20261204T211500Z-1a2b3c4d", b"Test Author", b"Apache-2.0")


def test_build_metadata_min_parser_version():
    assert _parse(SAMPLE).minParserVersion == b"1.0.0"


def test_build_metadata_tensor_names():
    subgraph = _parse(SAMPLE).subgraphMetadata[0]
    assert [tensor.name for tensor in subgraph.inputTensorMetadata] == [b"image"]
    assert [tensor.name for tensor in subgraph.outputTensorMetadata] == [b"probability"]


def test_build_metadata_input_is_rgb_image():
    image = _parse(SAMPLE).subgraphMetadata[0].inputTensorMetadata[0]
    assert image.content.contentPropertiesType == meta_fb.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == meta_fb.ColorSpaceType.RGB


def test_build_metadata_normalization_values():
    (unit,) = _parse(SAMPLE).subgraphMetadata[0].inputTensorMetadata[0].processUnits
    assert unit.optionsType == meta_fb.ProcessUnitOptions.NormalizationOptions
    assert (list(unit.options.mean), list(unit.options.std)) == ([0.0], [255.0])


def test_build_metadata_input_stats():
    stats = _parse(SAMPLE).subgraphMetadata[0].inputTensorMetadata[0].stats
    assert (list(stats.min), list(stats.max)) == ([0.0], [255.0])


def test_build_metadata_labels_file_type():
    (labels_file,) = _parse(SAMPLE).subgraphMetadata[0].outputTensorMetadata[0].associatedFiles
    assert labels_file.name == b"labels.txt"
    assert labels_file.type == meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS


def test_populate_metadata_twice_raises(exports):
    model = (exports["float32"] / export.TFLITE_MODEL_FILE).read_bytes()
    with pytest.raises(ValueError, match=r"the model already has a TFLITE_METADATA entry"):
        tflite_metadata.populate_metadata(model, b"", associated_files={})


def test_read_metadata_without_entry_raises():
    model = export.convert_to_tflite(_identity_model(), quantization=export.Quantization.FLOAT32)
    with pytest.raises(ValueError, match=r"the model has no TFLITE_METADATA entry"):
        tflite_metadata.read_metadata(model)


def _identity_model():
    import tf_keras

    inputs = tf_keras.Input((4,))
    return tf_keras.Model(inputs, tf_keras.layers.Activation("linear")(inputs))


def test_exported_labels_zip_byte_equal(exports, tiny_model_dir):
    with zipfile.ZipFile(exports["int8"] / export.TFLITE_MODEL_FILE) as archive:
        packed = archive.read(artifacts.LABELS_FILE)
    assert packed == (tiny_model_dir / artifacts.LABELS_FILE).read_bytes()


def test_exported_labels_zip_uncompressed(exports):
    with zipfile.ZipFile(exports["int8"] / export.TFLITE_MODEL_FILE) as archive:
        assert [entry.compress_type for entry in archive.infolist()] == [zipfile.ZIP_STORED]


def test_exported_metadata_version_matches_info(exports):
    metadata = tflite_metadata.read_metadata((exports["float16"] / export.TFLITE_MODEL_FILE).read_bytes())
    assert metadata.version.decode() == export.read_export_info(exports["float16"]).version


def test_exported_metadata_names_author_license(exports):
    metadata = tflite_metadata.read_metadata((exports["int8"] / export.TFLITE_MODEL_FILE).read_bytes())
    assert (metadata.name, metadata.author, metadata.license) == (b"flowers", b"Test Author", b"Apache-2.0")


@pytest.mark.parametrize(("choice", "input_max"), [("int8", 255.0), ("dynamic", 1.0), ("float32", 1.0)])
def test_exported_input_stats_fit_input_type(choice, input_max, exports):
    metadata = tflite_metadata.read_metadata((exports[choice] / export.TFLITE_MODEL_FILE).read_bytes())
    image = metadata.subgraphMetadata[0].inputTensorMetadata[0]
    assert (list(image.stats.min), list(image.stats.max)) == ([0.0], [input_max])
    assert (list(image.processUnits[0].options.mean), list(image.processUnits[0].options.std)) == ([0.0], [255.0])


@pytest.mark.parametrize("choice", ["int8", "float32"])
def test_mediapipe_reads_labels_from_metadata(choice, exports, flower_dataset):
    photo = artifacts.image_paths(flower_dataset["images"], artifacts.read_manifest(flower_dataset["test"]))[0]
    names = _classify_with_mediapipe(exports[choice] / export.TFLITE_MODEL_FILE, Path(photo))
    assert sorted(names) == flower_dataset["labels"]


def _train_head_model(model_dir: Path, flower_dataset: dict) -> Path:
    """Fit a softmax head on pretrained EfficientNet-Lite0 features of the train split."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from components.preprocessing import load_image
    from tests.test_export import build_classifier, save_model_folder

    labels = flower_dataset["labels"]
    rows = artifacts.read_manifest(flower_dataset["train"])
    paths = artifacts.image_paths(flower_dataset["images"], rows)
    images = np.stack([load_image(tf.constant(path), (224, 224)).numpy() for path in paths])
    targets = np.array([labels.index(row.label) for row in rows])

    model = build_classifier(str(PRETRAINED_BACKBONE), num_classes=len(labels), input_size=224)
    backbone = tf_keras.Model(model.inputs, model.layers[1].output)
    features = backbone.predict(images, batch_size=16, verbose=0)
    head = tf_keras.Sequential([tf_keras.Input((features.shape[1],)), model.layers[-1]])
    head.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    head.fit(features, targets, epochs=30, batch_size=16, verbose=0)
    return save_model_folder(
        model_dir, model, labels=labels, backbone_uri=str(PRETRAINED_BACKBONE), input_size=224
    )


@pytest.mark.slow
def test_mediapipe_names_held_out_photos_correctly(tmp_path, flower_dataset):
    # NOTE: a plain head fit, not components.train, so this test checks the export alone.
    model_dir = _train_head_model(tmp_path / "model", flower_dataset)
    export.export_model(
        model_dir, tmp_path / "export", images_dir=flower_dataset["images"],
        train_dir=flower_dataset["train"], options=export.ExportOptions(quantization="int8"),
    )

    model_path = tmp_path / "export" / export.TFLITE_MODEL_FILE
    held_out = artifacts.read_manifest(flower_dataset["test"])
    correct = 0
    for row in held_out:
        names = _classify_with_mediapipe(model_path, flower_dataset["images"] / row.path)
        correct += names[0] == row.label
    # 20 held-out photos, 4 per class. As a Keras model, this head (fit on 80 photos) named 14
    # of them correctly when measured. A wrong input scale or label order scores near chance (4).
    assert correct >= 12, f"MediaPipe named {correct} of {len(held_out)} held-out photos correctly"

    evaluation = tflite_eval.evaluate_tflite(
        model_path, images_dir=flower_dataset["images"], split_dir=flower_dataset["test"]
    )
    # MediaPipe and LiteRT run the same file, and their resizing differs only slightly.
    assert abs(evaluation.accuracy * len(held_out) - correct) <= 2
