"""Tests of the export step and of evaluating the exported .tflite, on real photos and TensorFlow."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from ai_edge_litert.interpreter import Interpreter

from components import artifacts, export, tflite_eval
from components.preprocessing import load_image
from tests.conftest import MINI_ARCHIVE
from tests.tiny_backbone import save_tiny_backbone

INPUT_SIZE = 32
TEST_PHOTOS_PER_CLASS = 4


def build_image_dataset(archive: Path, dataset_dir: Path) -> list[artifacts.ManifestRow]:
    """Unpack a flowers archive into an image Dataset folder with manifest.jsonl and labels.txt."""
    with tarfile.open(archive) as tar:
        tar.extractall(dataset_dir / "unpacked", filter="data")
    rows = []
    for photo in sorted((dataset_dir / "unpacked").glob("flower_photos/*/*.jpg")):
        relative = Path(artifacts.IMAGES_DIR) / photo.parent.name / photo.name
        (dataset_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        photo.rename(dataset_dir / relative)
        with Image.open(dataset_dir / relative) as image:
            width, height = image.size
        rows.append(artifacts.ManifestRow(
            path=relative.as_posix(), label=photo.parent.name,
            sha256=hashlib.sha256((dataset_dir / relative).read_bytes()).hexdigest(),
            width=width, height=height, source=photo.relative_to(dataset_dir / "unpacked").as_posix(),
        ))
    artifacts.write_manifest(dataset_dir / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(dataset_dir / artifacts.LABELS_FILE, sorted({row.label for row in rows}))
    return rows


def write_split(split_dir: Path, rows: list[artifacts.ManifestRow], labels: list[str]) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_manifest(split_dir / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(split_dir / artifacts.LABELS_FILE, labels)
    return split_dir


def split_by_class(
    rows: list[artifacts.ManifestRow], *, test_per_class: int
) -> tuple[list[artifacts.ManifestRow], list[artifacts.ManifestRow]]:
    """Hold out the last test_per_class photos of each class, in path order."""
    train, test = [], []
    for label in sorted({row.label for row in rows}):
        of_class = sorted((row for row in rows if row.label == label), key=lambda row: row.path)
        train += of_class[:-test_per_class]
        test += of_class[-test_per_class:]
    return train, test


def save_model_folder(
    model_dir: Path, keras_model: tf_keras.Model, *, labels: list[str], backbone_uri: str, input_size: int
) -> Path:
    """Write a Model folder in the layout of the train step."""
    model_dir.mkdir(parents=True, exist_ok=True)
    keras_model.save(model_dir / artifacts.SAVED_MODEL_DIR, save_format="tf")
    artifacts.write_labels(model_dir / artifacts.LABELS_FILE, labels)
    artifacts.write_model_info(model_dir, artifacts.ModelInfo(
        model_spec="custom", backbone_uri=backbone_uri, input_height=input_size, input_width=input_size,
    ))
    return model_dir


def build_classifier(backbone_uri: str, *, num_classes: int, input_size: int, seed: int = 0) -> tf_keras.Model:
    """Build Model Maker's classifier shape: backbone -> dropout -> dense softmax."""
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((input_size, input_size, 3))
    features = hub.KerasLayer(backbone_uri, trainable=False)(inputs)
    features = tf_keras.layers.Dropout(0.2)(features)
    outputs = tf_keras.layers.Dense(num_classes, activation="softmax")(features)
    return tf_keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def flower_dataset(tmp_path_factory, mini_archive) -> dict:
    """The mini archive as an image Dataset with a train split and a 4-per-class test split."""
    root = tmp_path_factory.mktemp("flowers")
    rows = build_image_dataset(mini_archive, root / "images")
    labels = artifacts.read_labels(root / "images")
    train, test = split_by_class(rows, test_per_class=TEST_PHOTOS_PER_CLASS)
    return {
        "images": root / "images",
        "train": write_split(root / "train", train, labels),
        "test": write_split(root / "test", test, labels),
        "labels": labels,
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, flower_dataset) -> Path:
    """An untrained 32x32 classifier on the tiny random backbone, saved as a Model folder."""
    root = tmp_path_factory.mktemp("tiny_model")
    backbone = save_tiny_backbone(root / "backbone")
    model = build_classifier(str(backbone), num_classes=len(flower_dataset["labels"]), input_size=INPUT_SIZE)
    return save_model_folder(
        root / "model", model, labels=flower_dataset["labels"], backbone_uri=str(backbone), input_size=INPUT_SIZE
    )


@pytest.fixture(scope="session")
def exports(tmp_path_factory, tiny_model_dir, flower_dataset) -> dict[str, Path]:
    """The tiny model exported once with each quantization choice."""
    root = tmp_path_factory.mktemp("exports")
    folders = {}
    for choice in export.Quantization:
        options = export.ExportOptions(
            quantization=choice.value, model_name="flowers", author="Test Author",
            license="Apache-2.0", num_calibration_images=20,
        )
        export.export_model(
            tiny_model_dir, root / choice.value, images_dir=flower_dataset["images"],
            train_dir=flower_dataset["train"], options=options,
        )
        folders[choice.value] = root / choice.value
    return folders


def _run_interpreter(model_path: Path, image: np.ndarray) -> tuple[np.ndarray, dict, dict]:
    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    batch = tflite_eval.quantize_input(image[np.newaxis], input_details)
    interpreter.set_tensor(input_details["index"], batch)
    interpreter.invoke()
    raw = interpreter.get_tensor(output_details["index"])
    return tflite_eval.dequantize_output(raw, output_details)[0], input_details, output_details


def test_parse_quantization_bad_name_lists_choices():
    with pytest.raises(ValueError, match=r"invalid quantization 'int4': choose one of int8, dynamic, float16, float32"):
        export.parse_quantization("int4")


def test_parse_quantization_known_names_resolve():
    assert [export.parse_quantization(name) for name in ("int8", "dynamic", "float16", "float32")] == list(
        export.Quantization
    )


def test_export_options_default_is_int8():
    assert export.ExportOptions().quantization == "int8"


@pytest.mark.parametrize("choice", [choice.value for choice in export.Quantization])
def test_export_each_choice_runs_in_interpreter(choice, exports, flower_dataset):
    image = np.full((INPUT_SIZE, INPUT_SIZE, 3), 0.5, dtype=np.float32)
    scores, _, _ = _run_interpreter(exports[choice] / export.TFLITE_MODEL_FILE, image)
    assert scores.shape == (len(flower_dataset["labels"]),)
    # uint8 scores have a step of 1/256, so five of them may sum to within 5/256 of 1.
    assert abs(float(scores.sum()) - 1.0) < 0.03


@pytest.mark.parametrize("choice", [choice.value for choice in export.Quantization])
def test_export_info_records_choice(choice, exports):
    info = export.read_export_info(exports[choice])
    assert info.quantization == choice


def test_export_int8_has_uint8_input_and_output(exports):
    image = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    _, input_details, output_details = _run_interpreter(exports["int8"] / export.TFLITE_MODEL_FILE, image)
    assert input_details["dtype"] == np.uint8
    assert output_details["dtype"] == np.uint8


def test_export_int8_input_takes_raw_pixels(exports):
    image = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    _, input_details, _ = _run_interpreter(exports["int8"] / export.TFLITE_MODEL_FILE, image)
    scale, zero_point = input_details["quantization"]
    assert scale == pytest.approx(1 / 255)
    assert zero_point == 0


@pytest.mark.parametrize("choice", ["dynamic", "float16", "float32"])
def test_export_float_choices_have_float_input(choice, exports):
    info = export.read_export_info(exports[choice])
    assert (info.input_dtype, info.output_dtype) == ("float32", "float32")


def test_export_int8_info_records_uint8(exports):
    info = export.read_export_info(exports["int8"])
    assert (info.input_dtype, info.output_dtype) == ("uint8", "uint8")


def test_export_float32_matches_keras_model(exports, tiny_model_dir, flower_dataset):
    keras_model = tf_keras.models.load_model(str(tiny_model_dir / artifacts.SAVED_MODEL_DIR))
    photo = artifacts.image_paths(flower_dataset["images"], artifacts.read_manifest(flower_dataset["test"]))[0]
    image = load_image(tf.constant(photo), (INPUT_SIZE, INPUT_SIZE)).numpy()
    expected = keras_model(image[np.newaxis], training=False).numpy()[0]
    scores, _, _ = _run_interpreter(exports["float32"] / export.TFLITE_MODEL_FILE, image)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_export_int8_tracks_keras_model(exports, tiny_model_dir, flower_dataset):
    keras_model = tf_keras.models.load_model(str(tiny_model_dir / artifacts.SAVED_MODEL_DIR))
    photo = artifacts.image_paths(flower_dataset["images"], artifacts.read_manifest(flower_dataset["test"]))[0]
    image = load_image(tf.constant(photo), (INPUT_SIZE, INPUT_SIZE)).numpy()
    expected = keras_model(image[np.newaxis], training=False).numpy()[0]
    scores, _, _ = _run_interpreter(exports["int8"] / export.TFLITE_MODEL_FILE, image)
    # Quantization error of a tiny random model on one photo; a broken input scale is far off.
    np.testing.assert_allclose(scores, expected, atol=0.05)


def test_export_folder_has_only_finished_files(exports):
    names = sorted(path.name for path in exports["int8"].iterdir())
    assert names == sorted([export.TFLITE_MODEL_FILE, artifacts.LABELS_FILE, export.EXPORT_INFO_FILE])


def test_export_labels_beside_model_match_model_folder(exports, tiny_model_dir):
    assert (exports["int8"] / artifacts.LABELS_FILE).read_bytes() == (tiny_model_dir / artifacts.LABELS_FILE).read_bytes()


def test_export_info_sha256_matches_file(exports):
    info = export.read_export_info(exports["dynamic"])
    model_bytes = (exports["dynamic"] / export.TFLITE_MODEL_FILE).read_bytes()
    assert info.sha256 == hashlib.sha256(model_bytes).hexdigest()


def test_export_info_size_matches_file(exports):
    info = export.read_export_info(exports["dynamic"])
    assert info.size_bytes == (exports["dynamic"] / export.TFLITE_MODEL_FILE).stat().st_size


def test_export_info_records_input_and_normalization(exports, flower_dataset):
    raw = json.loads((exports["float16"] / export.EXPORT_INFO_FILE).read_text())
    assert (raw["input_height"], raw["input_width"]) == (INPUT_SIZE, INPUT_SIZE)
    assert (raw["normalization_mean"], raw["normalization_std"]) == (0.0, 255.0)
    assert raw["labels"] == flower_dataset["labels"]


def test_export_info_counts_calibration_images(exports):
    assert export.read_export_info(exports["int8"]).num_calibration_images == 20
    assert export.read_export_info(exports["float32"]).num_calibration_images == 0


def test_export_version_has_time_and_hash(exports):
    version = export.read_export_info(exports["float32"]).version
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version)


def test_compute_version_known_case():
    now = datetime.datetime(2026, 12, 4, 21, 15, 0, tzinfo=datetime.timezone.utc)
    assert export.compute_version(b"model", now=now) == "20261204T211500Z-" + hashlib.sha256(b"model").hexdigest()[:8]


def test_compute_version_converts_to_utc():
    now = datetime.datetime(2026, 12, 5, 0, 15, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=3)))
    assert export.compute_version(b"model", now=now).startswith("20261204T211500Z-")


def test_calibration_paths_seeded_and_capped(flower_dataset):
    first = export.calibration_paths(flower_dataset["images"], flower_dataset["train"], max_images=10, seed=7)
    second = export.calibration_paths(flower_dataset["images"], flower_dataset["train"], max_images=10, seed=7)
    assert first == second
    assert len(first) == 10
    assert all(Path(path).is_file() for path in first)


def test_calibration_paths_uses_all_when_fewer(flower_dataset):
    paths = export.calibration_paths(flower_dataset["images"], flower_dataset["train"], max_images=500, seed=0)
    assert len(paths) == len(artifacts.read_manifest(flower_dataset["train"]))


def test_export_bad_quantization_writes_nothing(tmp_path, tiny_model_dir):
    options = export.ExportOptions(quantization="int16")
    with pytest.raises(ValueError, match=r"invalid quantization 'int16'.*int8, dynamic, float16, float32"):
        export.export_model(tiny_model_dir, tmp_path / "out", options=options)
    assert not (tmp_path / "out").exists()


def test_export_int8_without_train_split_raises(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match=r"int8 quantization needs calibration photos: pass train_dir"):
        export.export_model(tiny_model_dir, tmp_path / "out", options=export.ExportOptions())


def test_export_empty_model_name_raises(tmp_path, tiny_model_dir):
    options = export.ExportOptions(quantization="float32", model_name=" ")
    with pytest.raises(ValueError, match=r"model_name is empty"):
        export.export_model(tiny_model_dir, tmp_path / "out", options=options)


def test_export_zero_calibration_images_raises(tmp_path, tiny_model_dir):
    options = export.ExportOptions(num_calibration_images=0)
    with pytest.raises(ValueError, match=r"invalid num_calibration_images 0: set at least 1"):
        export.export_model(tiny_model_dir, tmp_path / "out", options=options)


def test_export_missing_saved_model_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"saved_model not found: .* is not a Model written by train"):
        export.export_model(tmp_path, tmp_path / "out", options=export.ExportOptions(quantization="float32"))


def test_read_export_info_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"export_info.json not found"):
        export.read_export_info(tmp_path)


def test_compute_accuracy_known_case():
    assert tflite_eval.compute_accuracy([0, 1, 2, 2], [0, 1, 2, 0]) == 0.75


def test_compute_accuracy_length_mismatch_raises():
    with pytest.raises(ValueError, match=r"predicted has 2 entries but expected has 3"):
        tflite_eval.compute_accuracy([0, 1], [0, 1, 2])


def test_compute_accuracy_empty_raises():
    with pytest.raises(ValueError, match=r"no predictions to score"):
        tflite_eval.compute_accuracy([], [])


def _write_color_dataset(root: Path) -> tuple[Path, Path, list[str]]:
    """Solid-color JPEGs: three labelled by their color and one red photo labelled blue."""
    labels = ["blue", "green", "red"]
    colors = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    cases = [("red", "red"), ("green", "green"), ("blue", "blue"), ("red", "blue")]
    rows = []
    for number, (color, label) in enumerate(cases):
        relative = f"{artifacts.IMAGES_DIR}/{label}/{number}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), colors[color]).save(root / relative, quality=95)
        rows.append(artifacts.ManifestRow(
            path=relative, label=label, sha256="", width=40, height=40, source=relative,
        ))
    artifacts.write_labels(root / artifacts.LABELS_FILE, labels)
    split = write_split(root / "split", rows, labels)
    return root, split, labels


def _save_color_model(model_dir: Path, labels: list[str]) -> Path:
    """A model that names the strongest RGB channel: no backbone, weights set by hand."""
    inputs = tf_keras.Input((8, 8, 3))
    pooled = tf_keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = tf_keras.layers.Dense(3, activation="softmax")(pooled)
    model = tf_keras.Model(inputs, outputs)
    # Label order is blue, green, red, so output i reads channel 2 - i.
    kernel = 10.0 * np.eye(3, dtype=np.float32)[:, ::-1]
    model.layers[-1].set_weights([kernel, np.zeros(3, dtype=np.float32)])
    return save_model_folder(model_dir, model, labels=labels, backbone_uri="none", input_size=8)


@pytest.mark.parametrize("choice", ["float32", "int8"])
def test_evaluate_tflite_color_case_accuracy(choice, tmp_path):
    images_dir, split_dir, labels = _write_color_dataset(tmp_path / "colors")
    model_dir = _save_color_model(tmp_path / "model", labels)
    export.export_model(
        model_dir, tmp_path / "export", images_dir=images_dir, train_dir=split_dir,
        options=export.ExportOptions(quantization=choice),
    )
    evaluation = tflite_eval.evaluate_tflite(
        tmp_path / "export" / export.TFLITE_MODEL_FILE, images_dir=images_dir, split_dir=split_dir
    )
    assert evaluation.accuracy == 0.75
    assert evaluation.num_images == 4


def test_evaluate_tflite_reports_size_latency_threads(exports, flower_dataset):
    model_path = exports["int8"] / export.TFLITE_MODEL_FILE
    evaluation = tflite_eval.evaluate_tflite(
        model_path, images_dir=flower_dataset["images"], split_dir=flower_dataset["test"], num_threads=2
    )
    assert evaluation.num_images == 5 * TEST_PHOTOS_PER_CLASS
    assert evaluation.size_bytes == model_path.stat().st_size
    assert evaluation.mean_latency_ms > 0
    assert evaluation.num_threads == 2
    assert 0.0 <= evaluation.accuracy <= 1.0


def test_evaluate_tflite_unknown_label_raises(tmp_path, exports, flower_dataset):
    rows = artifacts.read_manifest(flower_dataset["test"])[:1]
    renamed = [artifacts.ManifestRow(**{**row.__dict__, "label": "orchid"}) for row in rows]
    split = write_split(tmp_path / "split", renamed, ["orchid"])
    with pytest.raises(ValueError, match=r"the split has labels \['orchid'\] that are not among the model's labels"):
        tflite_eval.evaluate_tflite(
            exports["float32"] / export.TFLITE_MODEL_FILE, images_dir=flower_dataset["images"], split_dir=split
        )


def test_evaluate_tflite_bad_threads_raises(exports, flower_dataset):
    with pytest.raises(ValueError, match=r"invalid num_threads 0: set 1 or more"):
        tflite_eval.evaluate_tflite(
            exports["float32"] / export.TFLITE_MODEL_FILE, images_dir=flower_dataset["images"],
            split_dir=flower_dataset["test"], num_threads=0,
        )


def test_quantize_input_uint8_pixel_scale():
    details = {"dtype": np.uint8, "quantization": (1 / 255, 0)}
    image = np.array([0.0, 51 / 255, 1.0, 1.2, -0.1], dtype=np.float32)
    assert tflite_eval.quantize_input(image, details).tolist() == [0, 51, 255, 255, 0]


def test_dequantize_output_uint8_known_case():
    details = {"dtype": np.uint8, "quantization": (1 / 256, 0)}
    scores = tflite_eval.dequantize_output(np.array([0, 128, 255], dtype=np.uint8), details)
    np.testing.assert_allclose(scores, [0.0, 0.5, 255 / 256])
