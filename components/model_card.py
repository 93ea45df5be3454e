"""The model card that promote uploads next to each version: a Markdown page of where the model
came from (data, split, backbone, hyperparameters, packages) and how good it is."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from components.artifacts import (
    INGEST_REPORT_FILE,
    SPLIT_INFO_FILE,
    ModelInfo,
    read_model_info,
)
from components.gate import Decision

logger = logging.getLogger(__name__)

# Distributions whose versions the card records: the training, conversion and orchestration
# stack, and this project itself.
CARD_PACKAGES = (
    "tensorflow",
    "tf-keras",
    "tensorflow-hub",
    "kfp",
    "ai-edge-litert",
    "mediapipe",
    "flower-classifier-pipeline",
)
NOT_INSTALLED = "not installed"
NOT_RECORDED = "not recorded"

SPLIT_NAMES = ("train", "validation", "test")

# Keys of ingest_report.json (components.ingest.IngestReport) and split.json that the card shows.
SOURCE_URI_KEY = "source_uri"
SOURCE_KIND_KEY = "source_kind"
SOURCE_SHA256_KEY = "source_sha256"  # null when the source was a folder, not an archive
CLASS_COUNTS_KEY = "class_counts"
SPLIT_FRACTIONS_KEY = "fractions"
SPLIT_SEED_KEY = "seed"

# Settings that change how fast training runs or where it keeps data, not the trained model.
PERFORMANCE_SETTINGS = ("cache_features", "feature_memory_bytes", "feature_spill_dir")
PER_CLASS_METRICS = ("precision", "recall", "f1")
# z for a two-sided 95% interval, used in the Wilson score interval of the test accuracy.
Z_95 = 1.959964


@dataclasses.dataclass(frozen=True)
class ModelCardInputs:
    """The upstream records that the model card is written from."""

    ingest_report: dict  # ingest_report.json of the image Dataset
    splits: dict[str, dict]  # split name ("train", "validation", "test") -> its split.json
    model_info: ModelInfo
    evaluation_metrics: dict  # the evaluate step's metrics of the Keras model on the test split


def read_card_inputs(
    *,
    images_dir: str | Path,
    model_dir: str | Path,
    split_dirs: dict[str, str | Path],
    evaluation_metrics: dict,
) -> ModelCardInputs:
    """Read the ingest report, each split.json and model_info.json from the artifact folders."""
    return ModelCardInputs(
        ingest_report=_read_json(Path(images_dir) / INGEST_REPORT_FILE, written_by="ingest"),
        splits={
            name: _read_json(Path(folder) / SPLIT_INFO_FILE, written_by="split")
            for name, folder in split_dirs.items()
        },
        model_info=read_model_info(model_dir),
        evaluation_metrics=dict(evaluation_metrics),
    )


def _read_json(path: Path, *, written_by: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the artifact folder written by {written_by}")
    return json.loads(path.read_text(encoding="utf-8"))


def package_versions(packages: tuple[str, ...] = CARD_PACKAGES) -> dict[str, str]:
    """Return the installed version of each distribution, or "not installed"."""
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = NOT_INSTALLED
    return versions


def render_model_card(
    *,
    model_name: str,
    version: str,
    version_uri: str,
    card: ModelCardInputs,
    export_info: dict,
    export_metrics: dict,
    decision: Decision,
    packages: dict[str, str],
) -> str:
    """Render the model card of one version as Markdown text."""
    labels = sorted((card.ingest_report.get(CLASS_COUNTS_KEY) or {}).keys())
    hyperparameters = {
        name: value for name, value in card.model_info.hyperparameters.items() if name not in PERFORMANCE_SETTINGS
    }
    sections = [
        f"# Model card: {model_name} {version}\n\nFiles: `{version_uri}`",
        _use_section(labels, export_metrics),
        _data_section(card.ingest_report),
        _split_section(card.splits),
        _model_section(card.model_info, export_info),
        _table("## Hyperparameters", ("name", "value"), hyperparameters.items()),
        _metrics_section(export_metrics, card.evaluation_metrics, labels=labels, export_info=export_info),
        _decision_section(decision, num_test_images=int(export_metrics.get("num_test_images", 0))),
        _table("## Package versions", ("package", "version"), packages.items()),
    ]
    return "\n\n".join(sections) + "\n"


def accuracy_interval(accuracy: float, num_images: int) -> tuple[float, float]:
    """Return the 95% Wilson score interval of an accuracy measured on num_images photos."""
    if num_images <= 0:
        return (0.0, 1.0)
    denominator = 1 + Z_95**2 / num_images
    center = (accuracy + Z_95**2 / (2 * num_images)) / denominator
    half_width = Z_95 * ((accuracy * (1 - accuracy) / num_images + Z_95**2 / (4 * num_images**2)) ** 0.5)
    half_width /= denominator
    return (max(0.0, center - half_width), min(1.0, center + half_width))


def _use_section(labels: list[str], export_metrics: dict) -> str:
    num_images = int(export_metrics.get("num_test_images", 0))
    return (
        "## Intended use and limitations\n\n"
        f"Classifies the main object of a photo as one of {len(labels)} classes: {', '.join(labels)}. "
        "It has no 'other' class, so a photo of anything else still gets one of these labels. "
        f"Its accuracy was measured on {num_images} test photos held out from the same source as the "
        "training photos; on photos taken another way (camera, light, framing) it can be lower."
    )


def _data_section(ingest_report: dict) -> str:
    source = ingest_report.get(SOURCE_URI_KEY, NOT_RECORDED)
    kind = ingest_report.get(SOURCE_KIND_KEY, NOT_RECORDED)
    sha256 = ingest_report.get(SOURCE_SHA256_KEY, NOT_RECORDED)
    sha256_text = f"`{sha256}`" if sha256 is not None else "none (a folder source has no archive to hash)"
    class_counts = ingest_report.get(CLASS_COUNTS_KEY) or {}
    header = (
        f"## Data\n\nSource: `{source}` ({kind})\n\nSource sha256: {sha256_text}\n\n"
        f"Photos: {sum(class_counts.values())} in {len(class_counts)} classes, after ingest left out "
        f"{_count(ingest_report.get('num_duplicates', 0), 'duplicate')}, "
        f"{_count(ingest_report.get('num_quarantined', 0), 'photo')} that did not decode and "
        f"{_count(ingest_report.get('num_skipped', 0), 'other file')} (ingest_report.json names them)"
    )
    return header + "\n\n" + _table(None, ("class", "photos"), sorted(class_counts.items()))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _split_section(splits: dict[str, dict]) -> str:
    names = [name for name in SPLIT_NAMES if name in splits]
    first = splits[names[0]] if names else {}
    classes = sorted({label for info in splits.values() for label in info.get(CLASS_COUNTS_KEY, {})})
    rows = [
        (label, *(splits[name].get(CLASS_COUNTS_KEY, {}).get(label, 0) for name in names))
        for label in classes
    ]
    fractions = first.get(SPLIT_FRACTIONS_KEY)
    fractions_text = (
        ", ".join(f"{name} {_inline(fractions[name])}" for name in SPLIT_NAMES if name in fractions)
        if isinstance(fractions, dict) else NOT_RECORDED
    )
    header = (
        f"## Split\n\nFractions: {fractions_text}, per class, by a seeded hash of each photo's content\n\n"
        f"Seed: {_inline(first.get(SPLIT_SEED_KEY, NOT_RECORDED))}"
    )
    return header + "\n\n" + _table(None, ("class", *names), rows)


def _model_section(model_info: ModelInfo, export_info: dict) -> str:
    rows = [
        ("model spec", model_info.model_spec),
        ("backbone", model_info.backbone_uri),
        ("input size (height x width)", f"{model_info.input_height} x {model_info.input_width}"),
        ("input normalization", f"(pixel - {model_info.normalization_mean}) / {model_info.normalization_std}"),
        ("training images", model_info.num_train_images),
        ("validation images", model_info.num_validation_images),
        ("quantization", export_info.get("quantization", NOT_RECORDED)),
        *(
            [("int8 calibration", f"{export_info['num_calibration_images']} photos of the train split")]
            if export_info.get("quantization") == "int8" and "num_calibration_images" in export_info else []
        ),
        ("model.tflite size (bytes)", export_info.get("size_bytes", NOT_RECORDED)),
        ("model.tflite sha256", export_info.get("sha256", NOT_RECORDED)),
    ]
    return _table("## Model", ("property", "value"), rows)


def _metrics_section(export_metrics: dict, evaluation_metrics: dict, *, labels: list[str], export_info: dict) -> str:
    accuracy = export_metrics.get("accuracy")
    num_images = int(export_metrics.get("num_test_images", 0))
    lines = ["## Metrics", ""]
    if isinstance(accuracy, (int, float)):
        low, high = accuracy_interval(float(accuracy), num_images)
        lines.append(
            f"The exported model.tflite classifies {_inline(accuracy)} of the {num_images} test photos "
            f"right (95% interval {low:.3f} to {high:.3f}, Wilson score). This is the accuracy the gate judged."
        )
    threads = export_metrics.get("latency_num_threads")
    input_dtype = export_info.get("input_dtype", NOT_RECORDED)
    lines.append(
        f"Latency: the mean of one {input_dtype} image per call of the LiteRT interpreter"
        + (f" with {_inline(threads)} thread(s)" if threads is not None else "")
        + " on the machine that ran the export step."
    )
    exported = _table(None, ("metric", "value"), sorted(export_metrics.items()))

    per_class_keys = {f"{metric}_{label}" for metric in PER_CLASS_METRICS for label in labels}
    overall = sorted((name, value) for name, value in evaluation_metrics.items() if name not in per_class_keys)
    per_class = [
        (label, *(evaluation_metrics.get(f"{metric}_{label}", NOT_RECORDED) for metric in PER_CLASS_METRICS))
        for label in labels
    ]
    evaluated = _table("Of the Keras model before export, on the same test photos:", ("metric", "value"), overall)
    classes = _table(None, ("class", *PER_CLASS_METRICS), per_class)
    return "\n".join(lines) + "\n\n" + exported + "\n\n" + evaluated + "\n\n" + classes


def _decision_section(decision: Decision, *, num_test_images: int) -> str:
    verdict = "passed" if decision.passed else "failed"
    champion = decision.champion_version or "none (first promotion)"
    rows = [(check.name, "passed" if check.passed else "failed", check.reason) for check in decision.checks]
    header = f"## Gate decision\n\nThe gate {verdict}. Champion judged against: {champion}"
    low, high = accuracy_interval(decision.accuracy, num_test_images)
    straddled = [check.name for check in decision.checks if low < check.threshold <= high]
    if straddled:
        header += (
            f"\n\nThe 95% interval of the accuracy ({low:.3f} to {high:.3f}) contains the threshold of "
            f"{', '.join(straddled)}: the test split is too small to tell this model from one exactly "
            "at the threshold, so a larger test split would make the decision firmer."
        )
    return header + "\n\n" + _table(None, ("check", "result", "reason"), rows)


def _table(title: str | None, columns: tuple[str, ...], rows) -> str:
    lines = [f"{title}\n"] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_inline(cell) for cell in row) + " |")
    return "\n".join(lines)


def _inline(value: Any) -> str:
    """Format a value for one Markdown table cell or line."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        # KFP stores every metric as a float, so counts and sizes come back as 3954934.0.
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")
