"""Split step: divide an image Dataset into train, validation and test split Datasets.

Each class is split on its own (stratified). Within a class, the distinct photos are ordered by
a key, sha256(f"{seed}:{photo sha256}"), and cut into three runs of consecutive keys. So the
split of a photo follows from its content and the seed, not from its file name or row order.
Rows with the same content share one key and so one split.

The cut positions of a class of n distinct photos with fractions f_train, f_validation, f_test
and cumulative fractions F1 = f_train, F2 = f_train + f_validation are

    c1 = min(max(round(F1 * n), 1), n - 2)
    c2 = min(max(round(F2 * n), c1 + 1), n - 1)

with round(x) = floor(x + 0.5). Train gets c1 photos, validation c2 - c1 and test n - c2.

Bounds, for every class (n counts distinct photo contents):
- Counts: every split gets at least one photo. When f * n >= 1 for all three splits, no clamp
  above is active, and train and test are within 0.5 of f * n and validation within 1.
  Smaller classes, where the one-photo minimum takes over, stay within 2 of f * n.
- Stability: c1 and c2 never decrease when n grows, and each grows by at most k when k photos
  are added. So adding k photos to a class (with the same seed and fractions) moves at most
  k existing photos across each of the two cuts: at most 2 * k existing photos change split,
  and the other classes do not change at all. Removing k photos moves at most 2 * k too.

The layout of the split Dataset folders is described in components/artifacts.py.
"""


import dataclasses
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

from kfp.dsl import Dataset, Input, Output

from components import artifacts
from components.artifacts import ManifestRow

logger = logging.getLogger(__name__)

TRAIN = "train"
VALIDATION = "validation"
TEST = "test"
SPLIT_NAMES = (TRAIN, VALIDATION, TEST)

# Allowed slack between the sum of the three fractions and 1, for values such as 0.7 + 0.2 + 0.1.
FRACTION_SUM_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """Fractions of each class's photos that go to each split, and the seed of the ordering."""

    train_fraction: float = 0.8
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0


def validate_options(options: SplitOptions) -> None:
    """Raise ValueError for fractions or a seed that the split cannot use."""
    fractions = {
        "train_fraction": options.train_fraction,
        "validation_fraction": options.validation_fraction,
        "test_fraction": options.test_fraction,
    }
    for name, value in fractions.items():
        # bool is an int subclass, and True would silently mean a fraction of 1.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{name}={value!r} is invalid: it must be a number in (0, 1)")
        if not 0 < value < 1:
            raise ValueError(
                f"{name}={value!r} is invalid: each fraction must be in (0, 1), because every "
                "split needs photos (training reads the validation split for its validation "
                "loss); set it to a value such as 0.1"
            )
    total = sum(fractions.values())
    if abs(total - 1) > FRACTION_SUM_TOLERANCE:
        raise ValueError(
            f"fractions sum to {total:.6g} (train {options.train_fraction!r}, validation "
            f"{options.validation_fraction!r}, test {options.test_fraction!r}), but they must "
            f"sum to 1 within {FRACTION_SUM_TOLERANCE}; for example 0.8, 0.1, 0.1"
        )
    if isinstance(options.seed, bool) or not isinstance(options.seed, int):
        raise ValueError(f"seed={options.seed!r} is invalid: it must be an integer, such as 0")


def allocate_counts(num_photos: int, options: SplitOptions) -> tuple[int, int, int]:
    """Return the (train, validation, test) photo counts of a class of num_photos photos.

    Raises ValueError when num_photos < 3, because each split needs one photo.
    """
    if num_photos < len(SPLIT_NAMES):
        raise ValueError(
            f"{num_photos} photos cannot fill {len(SPLIT_NAMES)} splits: each needs at least one"
        )
    train_cut = _round_half_up(options.train_fraction * num_photos)
    train_cut = min(max(train_cut, 1), num_photos - 2)
    validation_cut = _round_half_up(
        (options.train_fraction + options.validation_fraction) * num_photos
    )
    validation_cut = min(max(validation_cut, train_cut + 1), num_photos - 1)
    return train_cut, validation_cut - train_cut, num_photos - validation_cut


def _round_half_up(value: float) -> int:
    # Halves round up, as the formula in the module docstring states; round() rounds them to even.
    return math.floor(value + 0.5)


def ordering_key(sha256: str, seed: int) -> str:
    """Return the key that orders a photo within its class: a hash of the seed and its content."""
    return hashlib.sha256(f"{seed}:{sha256}".encode("ascii")).hexdigest()


def assign_splits(
    rows: Iterable[ManifestRow], options: SplitOptions
) -> dict[str, list[ManifestRow]]:
    """Assign each row to a split; returns the rows of each split, sorted by label and path.

    Raises ValueError when one content (sha256) has two labels, or a class has fewer than
    three distinct photos.
    """
    validate_options(options)
    contents_by_label = _group_by_label(rows)

    splits: dict[str, list[ManifestRow]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted(contents_by_label):
        contents = contents_by_label[label]
        if len(contents) < len(SPLIT_NAMES):
            raise ValueError(
                f"class {label!r} has {len(contents)} distinct photo(s), but each of the "
                f"{len(SPLIT_NAMES)} splits (train, validation, test) needs at least one: add "
                f"photos to {label!r} or remove the class from the source"
            )
        ordered = sorted(contents, key=lambda sha256: ordering_key(sha256, options.seed))
        counts = allocate_counts(len(ordered), options)
        start = 0
        for name, count in zip(SPLIT_NAMES, counts):
            for sha256 in ordered[start : start + count]:
                splits[name].extend(contents[sha256])
            start += count

    for name in SPLIT_NAMES:
        splits[name].sort(key=lambda row: (row.label, row.path))
    return splits


def _group_by_label(
    rows: Iterable[ManifestRow],
) -> dict[str, dict[str, list[ManifestRow]]]:
    # label -> sha256 -> rows; one content under two labels would leak across splits.
    grouped: dict[str, dict[str, list[ManifestRow]]] = defaultdict(lambda: defaultdict(list))
    label_of_content: dict[str, ManifestRow] = {}
    for row in rows:
        first = label_of_content.setdefault(row.sha256, row)
        if first.label != row.label:
            raise ValueError(
                f"photo content {row.sha256} has two labels: {first.label!r} ({first.path}) and "
                f"{row.label!r} ({row.path}); remove one copy from the source"
            )
        grouped[row.label][row.sha256].append(row)
    return grouped


def split_dataset(
    dataset_dir: str | Path,
    output_dirs: Mapping[str, str | Path],
    *,
    options: SplitOptions,
    dataset_uri: str = "",
) -> dict[str, dict[str, int]]:
    """Write the train, validation and test split Datasets of an image Dataset.

    output_dirs maps each name in SPLIT_NAMES to a folder, created if missing. dataset_uri is
    recorded in split.json so that a reader can tell which image Dataset the paths belong to.
    Returns the photo count of each class in each split: {split: {label: count}}.
    """
    validate_options(options)
    if set(output_dirs) != set(SPLIT_NAMES):
        raise ValueError(
            f"output_dirs has keys {sorted(output_dirs)}, but it needs exactly {list(SPLIT_NAMES)}"
        )
    rows = artifacts.read_manifest(dataset_dir)
    labels = artifacts.read_labels(dataset_dir)
    _check_labels(rows, labels, dataset_dir=dataset_dir)

    splits = assign_splits(rows, options)
    class_counts = {name: _count_by_label(splits[name], labels) for name in SPLIT_NAMES}
    for name in SPLIT_NAMES:
        _write_split(
            Path(output_dirs[name]),
            name=name,
            rows=splits[name],
            labels=labels,
            info=_split_info(name, options, class_counts[name], dataset_uri),
        )

    logger.info(
        "Split %d photos of %d classes into train %d, validation %d, test %d",
        len(rows),
        len(labels),
        *(len(splits[name]) for name in SPLIT_NAMES),
    )
    return class_counts


def _check_labels(rows: list[ManifestRow], labels: list[str], *, dataset_dir: str | Path) -> None:
    unknown = sorted({row.label for row in rows} - set(labels))
    if unknown:
        raise ValueError(
            f"{dataset_dir}: manifest labels {unknown} are missing from {artifacts.LABELS_FILE} "
            f"(which lists {labels}); write the Dataset again with ingest"
        )
    empty = [label for label in labels if not any(row.label == label for row in rows)]
    if empty:
        raise ValueError(
            f"{dataset_dir}: class {empty[0]!r} has 0 photos, but each of the "
            f"{len(SPLIT_NAMES)} splits needs at least one: add photos to {empty[0]!r} or "
            "remove the class from the source"
        )


def _count_by_label(rows: list[ManifestRow], labels: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(labels, 0)
    for row in rows:
        counts[row.label] += 1
    return counts


def _split_info(
    name: str, options: SplitOptions, class_counts: dict[str, int], dataset_uri: str
) -> dict:
    return {
        "split": name,
        "fractions": {
            TRAIN: options.train_fraction,
            VALIDATION: options.validation_fraction,
            TEST: options.test_fraction,
        },
        "seed": options.seed,
        "num_images": sum(class_counts.values()),
        "class_counts": class_counts,
        "dataset_uri": dataset_uri,
    }


def _write_split(
    output_dir: Path, *, name: str, rows: list[ManifestRow], labels: list[str], info: dict
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_manifest(output_dir / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(output_dir / artifacts.LABELS_FILE, labels)
    info_path = output_dir / artifacts.SPLIT_INFO_FILE
    info_path.write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    logger.debug("Wrote the %s split (%d rows) to %s", name, len(rows), output_dir)


def split_component(
    dataset: Input[Dataset],
    train_fraction: float,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
    test_data: Output[Dataset],
):
    """Split an image Dataset into train, validation and test Datasets, stratified per class."""
    import logging

    from components import split as step

    outputs = {
        step.TRAIN: train_data,
        step.VALIDATION: validation_data,
        step.TEST: test_data,
    }
    options = step.SplitOptions(
        train_fraction=train_fraction,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    class_counts = step.split_dataset(
        dataset.path,
        {name: artifact.path for name, artifact in outputs.items()},
        options=options,
        dataset_uri=dataset.uri,
    )

    for name, artifact in outputs.items():
        artifact.metadata["split"] = name
        artifact.metadata["num_images"] = sum(class_counts[name].values())
        artifact.metadata["class_counts"] = class_counts[name]
        artifact.metadata["dataset_uri"] = dataset.uri
    logging.getLogger("components.split").info(
        "Split %s: train %d, validation %d, test %d photos",
        dataset.uri,
        *(sum(class_counts[name].values()) for name in step.SPLIT_NAMES),
    )
