"""Evaluate an exported .tflite classifier with the LiteRT interpreter (ai-edge-litert).

The accuracy measured here is on the file that ships, after quantization, and it is what the
gate judges. Photos go through the same preprocessing as training (components.preprocessing);
a uint8 model gets them quantized with its input tensor's scale and zero point.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from components import artifacts, tflite_metadata
from components.preprocessing import load_image

logger = logging.getLogger(__name__)

# One thread makes latencies comparable between runs on a shared machine and close to a
# phone's single big core; pass num_threads to measure more.
DEFAULT_NUM_THREADS = 1
DEFAULT_WARMUP_RUNS = 3


@dataclasses.dataclass(frozen=True)
class TfliteEvaluation:
    """Metrics of an exported model on one split."""

    accuracy: float
    num_images: int
    size_bytes: int
    mean_latency_ms: float  # one image per invoke, after warm-up, with num_threads threads
    num_threads: int


def compute_accuracy(predicted: Sequence[int], expected: Sequence[int]) -> float:
    """Return the fraction of positions where predicted equals expected."""
    if len(predicted) != len(expected):
        raise ValueError(
            f"predicted has {len(predicted)} entries but expected has {len(expected)}: "
            "pass one prediction per image"
        )
    if not expected:
        raise ValueError("no predictions to score: the split has no images")
    hits = sum(1 for guess, truth in zip(predicted, expected) if guess == truth)
    return hits / len(expected)


def quantize_input(image: np.ndarray, details: dict) -> np.ndarray:
    """Convert a float image batch to the input tensor's dtype, quantizing for integer inputs."""
    dtype = details["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return image.astype(dtype)
    scale, zero_point = details["quantization"]
    limits = np.iinfo(dtype)
    quantized = np.round(image / scale + zero_point)
    return np.clip(quantized, limits.min, limits.max).astype(dtype)


def dequantize_output(values: np.ndarray, details: dict) -> np.ndarray:
    """Convert raw output values to float scores, dequantizing integer outputs."""
    if not np.issubdtype(details["dtype"], np.integer):
        return values.astype(np.float32)
    scale, zero_point = details["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


class TfliteClassifier:
    """A LiteRT interpreter over one .tflite classifier, fed one float [0, 1] image at a time."""

    def __init__(self, model_content: bytes, *, num_threads: int = DEFAULT_NUM_THREADS):
        self.interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input_details = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()[0]
        _, height, width, _ = self.input_details["shape"]
        self.input_size = (int(height), int(width))

    def classify(self, image: np.ndarray) -> np.ndarray:
        """Run the model on one float32 [height, width, 3] image in [0, 1]; returns the class scores."""
        batch = quantize_input(image[np.newaxis], self.input_details)
        self.interpreter.set_tensor(self.input_details["index"], batch)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.output_details["index"])
        return dequantize_output(raw, self.output_details)[0]


def _expected_indices(rows: list[artifacts.ManifestRow], labels: list[str]) -> list[int]:
    index_of = {label: index for index, label in enumerate(labels)}
    unknown = sorted({row.label for row in rows} - index_of.keys())
    if unknown:
        raise ValueError(
            f"the split has labels {unknown} that are not among the model's labels {labels}: "
            "evaluate with a split of the Dataset the model was trained on"
        )
    return [index_of[row.label] for row in rows]


def evaluate_tflite(
    tflite_path: str | Path,
    *,
    images_dir: str | Path,
    split_dir: str | Path,
    num_threads: int = DEFAULT_NUM_THREADS,
    warmup_runs: int = DEFAULT_WARMUP_RUNS,
) -> TfliteEvaluation:
    """Measure accuracy and single-image latency of a .tflite classifier on a split.

    The labels come from the labels.txt packed inside the model, so the scores are read in
    the order that the model's consumers see.
    """
    if num_threads < 1:
        raise ValueError(f"invalid num_threads {num_threads}: set 1 or more")
    model_content = Path(tflite_path).read_bytes()
    labels_file = tflite_metadata.read_associated_files(model_content)[artifacts.LABELS_FILE]
    labels = [line for line in labels_file.decode("utf-8").splitlines() if line]
    rows = artifacts.read_manifest(split_dir)
    expected = _expected_indices(rows, labels)
    if not rows:
        raise ValueError(f"the split {split_dir} is empty: there is nothing to evaluate")

    classifier = TfliteClassifier(model_content, num_threads=num_threads)
    paths = artifacts.image_paths(images_dir, rows)
    first_image = load_image(tf.constant(paths[0]), classifier.input_size).numpy()
    for _ in range(warmup_runs):
        classifier.classify(first_image)

    predicted = []
    total_seconds = 0.0
    for path in paths:
        image = load_image(tf.constant(path), classifier.input_size).numpy()
        start = time.perf_counter()
        scores = classifier.classify(image)
        total_seconds += time.perf_counter() - start
        predicted.append(int(np.argmax(scores)))

    evaluation = TfliteEvaluation(
        accuracy=compute_accuracy(predicted, expected),
        num_images=len(rows),
        size_bytes=len(model_content),
        mean_latency_ms=1000.0 * total_seconds / len(rows),
        num_threads=num_threads,
    )
    logger.info(
        "evaluated %s: accuracy %.4f on %d images, %.3f ms per image with %d thread(s)",
        tflite_path, evaluation.accuracy, evaluation.num_images, evaluation.mean_latency_ms,
        num_threads,
    )
    return evaluation
