"""Export step: convert the trained Keras model to .tflite with TFLite Model Metadata.

The quantization choices are TFLite Model Maker's: full-integer int8 (the default), dynamic
range, float16 and float32. The int8 model takes uint8 pixel values in [0, 255] and returns
uint8 scores. The other choices take float32 RGB in [0, 1] and return float32 probabilities.

Exported model (the step's Model artifact), a folder:
    model.tflite        the converted model with metadata and labels.txt packed inside
    labels.txt          class names in the order of the model's outputs, the same bytes as the
                        file packed inside model.tflite
    export_info.json    an ExportInfo as JSON: quantization, version, size_bytes, sha256 of
                        model.tflite, input and output dtypes, input size and normalization

The version, UTC time plus a short hash of the converted model (20261204T211500Z-1a2b3c4d),
names the model in its metadata, and the promote step uses it as the version folder name.
"""

# No `from __future__ import annotations`: KFP reads export_component's annotations as types.

import dataclasses
import datetime
import enum
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import tensorflow as tf
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import artifacts, tflite_metadata
from components.preprocessing import load_image

logger = logging.getLogger(__name__)

TFLITE_MODEL_FILE = artifacts.TFLITE_MODEL_FILE
EXPORT_INFO_FILE = artifacts.EXPORT_INFO_FILE

# Model Maker calibrates int8 models on up to 500 training images.
DEFAULT_NUM_CALIBRATION_IMAGES = 500


class Quantization(str, enum.Enum):
    """Post-training quantization choices of TFLite Model Maker."""

    INT8 = "int8"  # full-integer, uint8 input and output, calibrated on training photos
    DYNAMIC = "dynamic"  # int8 weights, float activations
    FLOAT16 = "float16"  # float16 weights
    FLOAT32 = "float32"  # no quantization


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Settings of the export step."""

    quantization: str = Quantization.INT8.value
    model_name: str = "image_classifier"
    model_description: str = "Identify the most prominent object in the image from a set of categories."
    author: str = ""
    license: str = ""
    num_calibration_images: int = DEFAULT_NUM_CALIBRATION_IMAGES
    calibration_seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """Contents of export_info.json, the record of one exported model."""

    quantization: str
    version: str
    size_bytes: int
    sha256: str
    input_dtype: str
    output_dtype: str
    input_height: int
    input_width: int
    normalization_mean: float
    normalization_std: float
    labels: list[str]
    num_calibration_images: int


def parse_quantization(name: str) -> Quantization:
    """Look up a quantization choice by name; raises ValueError listing the choices."""
    try:
        return Quantization(name)
    except ValueError:
        choices = ", ".join(choice.value for choice in Quantization)
        raise ValueError(
            f"invalid quantization {name!r}: choose one of {choices} "
            f"({Quantization.INT8.value} is Model Maker's default)"
        ) from None


def validate_export_inputs(
    model_dir: str | Path,
    *,
    images_dir: str | Path | None,
    train_dir: str | Path | None,
    options: ExportOptions,
) -> Quantization:
    """Check the options and input folders before any conversion starts."""
    quantization = parse_quantization(options.quantization)
    if not options.model_name.strip():
        raise ValueError("model_name is empty: set the name that apps show for the model")
    if options.num_calibration_images < 1:
        raise ValueError(
            f"invalid num_calibration_images {options.num_calibration_images}: "
            "set at least 1 (Model Maker uses up to 500)"
        )

    saved_model = Path(model_dir) / artifacts.SAVED_MODEL_DIR
    if not saved_model.is_dir():
        raise FileNotFoundError(f"{saved_model} not found: {model_dir} is not a Model written by train")
    artifacts.read_labels(model_dir)
    artifacts.read_model_info(model_dir)

    if quantization is Quantization.INT8 and (train_dir is None or images_dir is None):
        raise ValueError(
            "int8 quantization needs calibration photos: pass train_dir (the train split) and "
            "images_dir (the image Dataset), or choose dynamic, float16 or float32"
        )
    return quantization


def calibration_paths(
    images_dir: str | Path, train_dir: str | Path, *, max_images: int, seed: int
) -> list[str]:
    """Pick a seeded sample of up to max_images training photos for int8 calibration."""
    rows = sorted(artifacts.read_manifest(train_dir), key=lambda row: row.path)
    if not rows:
        raise ValueError(f"the train split {train_dir} is empty: int8 calibration needs photos")
    sample = random.Random(seed).sample(rows, min(max_images, len(rows)))
    return artifacts.image_paths(images_dir, sample)


def _representative_dataset(
    paths: list[str], input_size: tuple[int, int]
) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for path in paths:
            image = load_image(tf.constant(path), input_size)
            yield [image.numpy()[np.newaxis]]

    return generate


def convert_to_tflite(
    keras_model: tf.keras.Model,
    *,
    quantization: Quantization,
    calibration_images: list[str] | None = None,
    input_size: tuple[int, int] = (224, 224),
) -> bytes:
    """Convert a tf-keras model to .tflite bytes without metadata."""
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if quantization is not Quantization.FLOAT32:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization is Quantization.FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
    if quantization is Quantization.INT8:
        if not calibration_images:
            raise ValueError("int8 quantization needs calibration_images; none were given")
        converter.representative_dataset = _representative_dataset(calibration_images, input_size)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8

    tflite_model = converter.convert()
    if quantization is Quantization.INT8:
        tflite_model = pin_pixel_input_quantization(tflite_model)
    return tflite_model


def pin_pixel_input_quantization(tflite_model: bytes) -> bytes:
    """Set a uint8 input's quantization to scale 1/255, zero point 0, so pixels go in as they are.

    The converter derives the input's scale from the calibration photos' observed range, often
    a little under [0, 1]. MediaPipe Tasks feeds a uint8 model the raw pixels and reads no
    NormalizationOptions for it, so any other scale would skew every input.
    The QUANTIZE op that follows the input requantizes to the calibrated int8 range, clamping
    the values outside it, as it would for a float model's input.
    """
    from tensorflow.lite.python import schema_py_generated as tflite_fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_model))
    subgraph = model.subgraphs[0]
    input_index = subgraph.inputs[0]
    tensor = subgraph.tensors[input_index]
    if tensor.type != tflite_fb.TensorType.UINT8:
        raise ValueError("the model's input is not uint8: only int8 exports take pixel values")

    for op in subgraph.operators:
        if input_index in op.inputs and flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) != "QUANTIZE":
            raise ValueError(
                "the converted int8 model feeds its uint8 input to "
                f"{flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)}, not QUANTIZE: "
                "its input scale cannot be changed safely"
            )

    tensor.quantization.scale = np.array([1.0 / 255.0], dtype=np.float32)
    tensor.quantization.zeroPoint = np.array([0], dtype=np.int64)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def compute_version(tflite_model: bytes, *, now: datetime.datetime | None = None) -> str:
    """Name a model version by UTC time and the first 8 hex digits of tflite_model's sha256.

    Export passes the model before its metadata is added, because the metadata contains the version.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    timestamp = now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{timestamp}-{hashlib.sha256(tflite_model).hexdigest()[:8]}"


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader never sees a half-written file under the final name: os.replace is atomic
    # within one file system, and the temporary file sits in the same folder.
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _tensor_dtypes(tflite_model: bytes) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model)
    input_dtype = interpreter.get_input_details()[0]["dtype"]
    output_dtype = interpreter.get_output_details()[0]["dtype"]
    return np.dtype(input_dtype).name, np.dtype(output_dtype).name


def _classifier_metadata(
    options: ExportOptions, *, version: str, info: artifacts.ModelInfo, input_dtype: str
) -> tflite_metadata.ClassifierMetadata:
    pixel_input = input_dtype == "uint8"
    return tflite_metadata.ClassifierMetadata(
        name=options.model_name,
        description=options.model_description,
        version=version,
        author=options.author,
        license=options.license,
        labels_file_name=artifacts.LABELS_FILE,
        normalization_mean=info.normalization_mean,
        normalization_std=info.normalization_std,
        input_min=0.0,
        input_max=255.0 if pixel_input else 1.0,
    )


def export_model(
    model_dir: str | Path,
    output_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    train_dir: str | Path | None = None,
    options: ExportOptions = ExportOptions(),
) -> ExportInfo:
    """Convert the Model folder at model_dir into an exported model folder at output_dir.

    images_dir and train_dir (the image Dataset and the train split) give the int8
    calibration photos; the other quantization choices do not read them.
    """
    quantization = validate_export_inputs(
        model_dir, images_dir=images_dir, train_dir=train_dir, options=options
    )
    info = artifacts.read_model_info(model_dir)
    labels = artifacts.read_labels(model_dir)
    input_size = (info.input_height, info.input_width)

    calibration = []
    if quantization is Quantization.INT8:
        calibration = calibration_paths(
            images_dir,
            train_dir,
            max_images=options.num_calibration_images,
            seed=options.calibration_seed,
        )

    import tf_keras

    keras_model = tf_keras.models.load_model(str(Path(model_dir) / artifacts.SAVED_MODEL_DIR), compile=False)
    converted = convert_to_tflite(
        keras_model, quantization=quantization, calibration_images=calibration, input_size=input_size
    )
    return _write_export(
        converted, output_dir, info=info, labels=labels, quantization=quantization,
        options=options, num_calibration_images=len(calibration),
    )


def _write_export(
    converted: bytes,
    output_dir: str | Path,
    *,
    info: artifacts.ModelInfo,
    labels: list[str],
    quantization: Quantization,
    options: ExportOptions,
    num_calibration_images: int,
) -> ExportInfo:
    version = compute_version(converted)
    input_dtype, output_dtype = _tensor_dtypes(converted)
    labels_bytes = "".join(f"{label}\n" for label in labels).encode("utf-8")
    metadata = tflite_metadata.build_metadata(
        _classifier_metadata(options, version=version, info=info, input_dtype=input_dtype)
    )
    model_bytes = tflite_metadata.populate_metadata(
        converted, metadata, associated_files={artifacts.LABELS_FILE: labels_bytes}
    )

    export_info = ExportInfo(
        quantization=quantization.value, version=version, size_bytes=len(model_bytes),
        sha256=hashlib.sha256(model_bytes).hexdigest(), input_dtype=input_dtype,
        output_dtype=output_dtype, input_height=info.input_height, input_width=info.input_width,
        normalization_mean=info.normalization_mean, normalization_std=info.normalization_std,
        labels=labels, num_calibration_images=num_calibration_images,
    )

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / artifacts.LABELS_FILE).write_bytes(labels_bytes)
    _write_atomically(output / TFLITE_MODEL_FILE, model_bytes)
    # export_info.json goes last, so its presence means the whole folder is complete.
    export_json = json.dumps(dataclasses.asdict(export_info), indent=2, sort_keys=True)
    _write_atomically(output / EXPORT_INFO_FILE, export_json.encode("utf-8"))
    logger.info(
        "exported %s model %s: %d bytes, input %s, to %s",
        quantization.value, version, len(model_bytes), input_dtype, output / TFLITE_MODEL_FILE,
    )
    return export_info


def read_export_info(export_dir: str | Path) -> ExportInfo:
    """Read export_info.json of an exported model folder."""
    path = Path(export_dir) / EXPORT_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {export_dir} is not a model written by export")
    return ExportInfo(**json.loads(path.read_text(encoding="utf-8")))


def export_component(
    images: Input[Dataset],
    model: Input[Model],
    train_data: Input[Dataset],
    test_data: Input[Dataset],
    quantization: str,
    model_name: str,
    model_description: str,
    author: str,
    license: str,
    tflite_model: Output[Model],
    metrics: Output[Metrics],
) -> NamedTuple("ExportOutputs", [("accuracy", float), ("version", str)]):
    """Export the model to .tflite and measure the exported file on the test split."""
    import logging
    from collections import namedtuple

    from components import export as step
    from components import tflite_eval

    options = step.ExportOptions(
        quantization=quantization, model_name=model_name, model_description=model_description,
        author=author, license=license,
    )
    info = step.export_model(
        model.path, tflite_model.path, images_dir=images.path, train_dir=train_data.path,
        options=options,
    )
    evaluation = tflite_eval.evaluate_tflite(
        f"{tflite_model.path}/{step.TFLITE_MODEL_FILE}", images_dir=images.path, split_dir=test_data.path
    )

    tflite_model.metadata["quantization"] = info.quantization
    tflite_model.metadata["version"] = info.version
    tflite_model.metadata["labels"] = info.labels
    tflite_model.metadata["size_bytes"] = info.size_bytes
    metrics.log_metric("accuracy", evaluation.accuracy)
    metrics.log_metric("size_bytes", evaluation.size_bytes)
    metrics.log_metric("mean_latency_ms", evaluation.mean_latency_ms)
    metrics.log_metric("num_test_images", evaluation.num_images)
    metrics.log_metric("latency_num_threads", evaluation.num_threads)
    logging.getLogger("components.export").info(
        "export %s %s: accuracy %.4f on %d test images, %d bytes, %.2f ms per image",
        info.quantization, info.version, evaluation.accuracy, evaluation.num_images,
        evaluation.size_bytes, evaluation.mean_latency_ms,
    )
    outputs = namedtuple("ExportOutputs", ["accuracy", "version"])
    return outputs(evaluation.accuracy, info.version)
