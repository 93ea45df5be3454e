"""Markdown report pieces for the train and evaluate steps: tables, curves and thumbnails.

Pictures are embedded as base64 data URIs, so a report is one self-contained file.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # draw to files only: steps run without a display
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from PIL import Image  # noqa: E402

if TYPE_CHECKING:
    from components.train import TrainResult

THUMBNAIL_MAX_SIDE = 96


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Format rows as a Markdown table; floats get 4 decimals, and "|" in a cell is escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [_format_cell(value) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def figure_data_uri(figure: plt.Figure) -> str:
    """Render a matplotlib figure as a PNG data URI and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_curves_data_uri(history: dict[str, list[float]]) -> str:
    """Draw loss and accuracy per epoch, train and validation, as a PNG data URI."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = range(1, len(history["loss"]) + 1)
    for axes, key in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(epochs, history[key], marker="o", label=f"train {key}")
        axes.plot(epochs, history[f"val_{key}"], marker="o", label=f"validation {key}")
        axes.set_xlabel("epoch")
        axes.set_title(key)
        axes.legend()
    return figure_data_uri(figure)


def thumbnail_data_uri(path: str | Path, max_side: int = THUMBNAIL_MAX_SIDE) -> str:
    """Shrink a photo to at most max_side pixels a side and return it as a JPEG data URI."""
    with Image.open(path) as image:
        thumbnail = image.convert("RGB")
    thumbnail.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def training_report(result: TrainResult, *, model_spec: str, backbone_uri: str) -> str:
    """Write the train step's report: data, hyperparameters, timings, curves and tuning trials."""
    sections = [
        "# Training report\n",
        f"Backbone: `{model_spec}` from `{backbone_uri}`. Photos: {result.num_train_images} train, "
        f"{result.num_validation_images} validation, {len(result.labels)} classes "
        f"({', '.join(result.labels)}).\n",
        _training_path_sentence(result),
        "## Hyperparameters\n",
        markdown_table(["name", "value"], sorted(result.hyperparameters.items())),
        "## Curves\n",
        f"![loss and accuracy per epoch]({training_curves_data_uri(result.history)})\n",
        markdown_table(
            ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"],
            [(epoch, *values) for epoch, values in enumerate(zip(*(
                result.history[key] for key in ("loss", "accuracy", "val_loss", "val_accuracy")
            )), start=1)],
        ),
    ]
    if result.trials:
        sections += ["## Head tuning trials\n", _trials_section(result)]
    return "\n".join(sections)


def _training_path_sentence(result: TrainResult) -> str:
    if not result.used_feature_cache:
        return f"The whole model ran in every epoch; training took {result.fit_seconds:.1f} s.\n"
    where = "spilled to disk" if result.features_spilled else "held in memory"
    return (
        f"Backbone features were computed once ({result.feature_seconds:.1f} s, {where}); "
        f"head tuning took {result.tuning_seconds:.1f} s and the final head trained in "
        f"{result.fit_seconds:.1f} s.\n"
    )


def _trials_section(result: TrainResult) -> str:
    from components.tuning import NUM_FOLDS  # imported here: tuning loads TensorFlow

    grid_names = ("learning_rate", "epochs", "dropout_rate", "l2_regularization", "label_smoothing")
    chosen = tuple(result.hyperparameters[name] for name in grid_names)
    rows = []
    for trial in result.trials:
        values = dataclasses.asdict(trial)
        is_chosen = tuple(values[name] for name in grid_names) == chosen
        rows.append([*values.values(), "chosen" if is_chosen else ""])
    headers = [*dataclasses.asdict(result.trials[0]).keys(), ""]
    return (
        f"Each trial trains the head on the stored features and is judged by {NUM_FOLDS}-fold "
        "cross-validation over the train and validation photos together; the chosen head is then "
        "trained on both.\n\n" + markdown_table(headers, rows)
    )
