"""On-disk layouts of the artifacts that the steps pass to each other, and their readers.

Image Dataset (written by ingest), a folder:
    images/<label>/<file>.jpg   every photo as an 8-bit RGB JPEG
    manifest.jsonl              one ManifestRow per image, as JSON
    labels.txt                  sorted class names, one a line
    ingest_report.json          counts, skipped and quarantined files, the source and its sha256

Split Dataset (written by split, one each for train, validation and test), a folder:
    manifest.jsonl              the rows of this split; each `path` is relative to the folder of
                                the image Dataset, so the photos are referenced, not copied
    labels.txt                  all class names of the image Dataset, so every split has the
                                same label order even if a split lacks a class
    split.json                  the split name, fractions, seed, per-class counts and the URI
                                of the image Dataset

Steps that read photos through a split take the image Dataset as an input too; KFP then stages
it for them, locally and on a cluster (where every artifact is its own folder in the bucket).

Model (written by train), a folder:
    saved_model/                the whole tf-keras model (backbone + head) as a SavedModel; it
                                loads with tf_keras.models.load_model(path) and needs no access
                                to the backbone's original handle
    labels.txt                  class names in the order of the model's outputs
    model_info.json             a ModelInfo as JSON

Exported model (written by export, read by promote), a folder:
    model.tflite                the converted model with TFLite Model Metadata and labels.txt packed in
    labels.txt                  class names in the order of the model's outputs
    export_info.json            quantization, version, size, sha256 and input details
                                (components.export.ExportInfo)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

IMAGES_DIR = "images"
MANIFEST_FILE = "manifest.jsonl"
LABELS_FILE = "labels.txt"
INGEST_REPORT_FILE = "ingest_report.json"
SPLIT_INFO_FILE = "split.json"

SAVED_MODEL_DIR = "saved_model"
MODEL_INFO_FILE = "model_info.json"

TFLITE_MODEL_FILE = "model.tflite"
EXPORT_INFO_FILE = "export_info.json"


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One image of a Dataset."""

    path: str  # relative to the image Dataset's folder, with forward slashes
    label: str
    sha256: str  # of the stored file's bytes
    width: int
    height: int
    source: str  # the file's path inside the source archive or folder


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Facts about a Model artifact that a consumer needs besides the SavedModel."""

    model_spec: str  # registry name, or "custom" for a backbone given by URI
    backbone_uri: str
    input_height: int
    input_width: int
    # The model takes float32 RGB in [0, 1]. For a consumer that feeds pixel values in
    # [0, 255], these are the mean and std of (pixel - mean) / std.
    normalization_mean: float = 0.0
    normalization_std: float = 255.0
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    num_train_images: int = 0
    num_validation_images: int = 0


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> int:
    """Write rows as JSON lines to path; returns the number of rows."""
    count = 0
    with open(path, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(dataclasses.asdict(row), sort_keys=True) + "\n")
            count += 1
    return count


def read_manifest(dataset_dir: str | Path) -> list[ManifestRow]:
    """Read the manifest of an image or split Dataset folder."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {dataset_dir} is not a Dataset written by ingest or split"
        )
    with open(path, encoding="utf-8") as stream:
        return [ManifestRow(**json.loads(line)) for line in stream if line.strip()]


def write_labels(path: Path, labels: Iterable[str]) -> None:
    Path(path).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_labels(artifact_dir: str | Path) -> list[str]:
    """Read labels.txt of a Dataset or Model folder."""
    path = Path(artifact_dir) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: every Dataset and Model folder has one")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def image_paths(images_dir: str | Path, rows: Iterable[ManifestRow]) -> list[str]:
    """Resolve the rows' relative paths against the image Dataset's folder."""
    root = Path(images_dir)
    return [str(root / row.path) for row in rows]


def write_model_info(model_dir: str | Path, info: ModelInfo) -> None:
    path = Path(model_dir) / MODEL_INFO_FILE
    path.write_text(json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True), encoding="utf-8")


def read_model_info(model_dir: str | Path) -> ModelInfo:
    path = Path(model_dir) / MODEL_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a Model written by train")
    return ModelInfo(**json.loads(path.read_text(encoding="utf-8")))
