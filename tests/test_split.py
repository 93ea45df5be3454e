"""Tests of the split step: count and stability bounds, determinism, the split Dataset layout."""


import dataclasses
import hashlib
import json
import random
import tarfile
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kfp import dsl, local
from kfp.dsl import Dataset, Output

from components import artifacts
from components import split as split_step
from components.artifacts import ManifestRow
from components.split import SPLIT_NAMES, SplitOptions

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

sha256_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@st.composite
def split_options(draw) -> SplitOptions:
    """Fractions in whole percent, each at least 1%, with a random seed."""
    train_percent = draw(st.integers(min_value=1, max_value=98))
    validation_percent = draw(st.integers(min_value=1, max_value=99 - train_percent))
    test_percent = 100 - train_percent - validation_percent
    return SplitOptions(
        train_fraction=train_percent / 100,
        validation_fraction=validation_percent / 100,
        test_fraction=test_percent / 100,
        seed=draw(st.integers(min_value=0, max_value=2**31)),
    )


@st.composite
def class_contents(draw, *, max_classes: int = 4, max_per_class: int = 60) -> dict[str, list[str]]:
    """Distinct sha256 values for each of 1 to max_classes classes, 3 to max_per_class each."""
    labels = draw(st.lists(st.sampled_from(["daisy", "rose", "tulip", "iris"]), min_size=1,
                           max_size=max_classes, unique=True))
    sizes = [draw(st.integers(3, max_per_class)) for _ in labels]
    hashes = draw(st.lists(sha256_hex, min_size=sum(sizes), max_size=sum(sizes), unique=True))
    contents: dict[str, list[str]] = {}
    start = 0
    for label, size in zip(labels, sizes):
        contents[label] = hashes[start:start + size]
        start += size
    return contents


def make_rows(contents: dict[str, list[str]]) -> list[ManifestRow]:
    return [
        ManifestRow(
            path=f"images/{label}/{sha256[:12]}.jpg",
            label=label,
            sha256=sha256,
            width=8,
            height=8,
            source=f"flower_photos/{label}/{sha256[:12]}.jpg",
        )
        for label, hashes in contents.items()
        for sha256 in hashes
    ]


def split_of_each_path(splits: dict[str, list[ManifestRow]]) -> dict[str, str]:
    return {row.path: name for name, rows in splits.items() for row in rows}


def fractions_of(options: SplitOptions) -> dict[str, float]:
    return {
        "train": options.train_fraction,
        "validation": options.validation_fraction,
        "test": options.test_fraction,
    }


# Count bounds of allocate_counts.


@PROPERTY_SETTINGS
@given(num_photos=st.integers(3, 2000), options=split_options())
def test_allocate_counts_sum_and_minimum_one(num_photos, options):
    counts = split_step.allocate_counts(num_photos, options)

    assert sum(counts) == num_photos
    assert min(counts) >= 1


@PROPERTY_SETTINGS
@given(num_photos=st.integers(3, 2000), options=split_options())
def test_allocate_counts_within_bound_when_shares_reach_one(num_photos, options):
    fractions = list(fractions_of(options).values())
    assume(min(fraction * num_photos for fraction in fractions) >= 1)

    train, validation, test = split_step.allocate_counts(num_photos, options)

    assert abs(train - fractions[0] * num_photos) <= 0.5 + 1e-9
    assert abs(validation - fractions[1] * num_photos) <= 1 + 1e-9
    assert abs(test - fractions[2] * num_photos) <= 0.5 + 1e-9


@PROPERTY_SETTINGS
@given(num_photos=st.integers(3, 40), options=split_options())
def test_allocate_counts_within_two_for_small_classes(num_photos, options):
    counts = split_step.allocate_counts(num_photos, options)

    for count, fraction in zip(counts, fractions_of(options).values()):
        assert abs(count - fraction * num_photos) < 2


def test_allocate_counts_raises_for_two_photos():
    with pytest.raises(ValueError, match=r"2 photos cannot fill 3 splits"):
        split_step.allocate_counts(2, SplitOptions())


def test_allocate_counts_mini_class_exact():
    assert split_step.allocate_counts(20, SplitOptions()) == (16, 2, 2)


# Properties of assign_splits.


@PROPERTY_SETTINGS
@given(contents=class_contents(), options=split_options())
def test_assign_splits_stratified_per_class(contents, options):
    splits = split_step.assign_splits(make_rows(contents), options)

    for label, hashes in contents.items():
        expected = split_step.allocate_counts(len(hashes), options)
        actual = tuple(sum(row.label == label for row in splits[name]) for name in SPLIT_NAMES)
        assert actual == expected, label


@PROPERTY_SETTINGS
@given(contents=class_contents(), options=split_options(), shuffle_seed=st.integers(0, 1000))
def test_assign_splits_ignores_row_order(contents, options, shuffle_seed):
    rows = make_rows(contents)
    shuffled = list(rows)
    random.Random(shuffle_seed).shuffle(shuffled)

    assert split_step.assign_splits(shuffled, options) == split_step.assign_splits(rows, options)


@PROPERTY_SETTINGS
@given(
    contents=class_contents(max_per_class=40),
    added=st.lists(sha256_hex, min_size=1, max_size=15, unique=True),
    options=split_options(),
    data=st.data(),
)
def test_assign_splits_growth_moves_bounded(contents, added, options, data):
    # Read backwards, the same pair of runs removes k photos, so this checks that bound too.
    existing = {sha256 for hashes in contents.values() for sha256 in hashes}
    added = [sha256 for sha256 in added if sha256 not in existing]
    assume(added)
    grown_label = data.draw(st.sampled_from(sorted(contents)))
    grown = {label: list(hashes) for label, hashes in contents.items()}
    grown[grown_label] += added

    before = split_of_each_path(split_step.assign_splits(make_rows(contents), options))
    after = split_of_each_path(split_step.assign_splits(make_rows(grown), options))

    moved = [path for path, name in before.items() if after[path] != name]
    moved_in_grown_class = [path for path in moved if f"/{grown_label}/" in path]
    assert len(moved) == len(moved_in_grown_class), "a class that got no photos changed"
    assert len(moved_in_grown_class) <= 2 * len(added)


@PROPERTY_SETTINGS
@given(contents=class_contents(max_per_class=30), options=split_options(), data=st.data())
def test_assign_splits_duplicate_content_same_split(contents, options, data):
    rows = make_rows(contents)
    copies = data.draw(st.lists(st.sampled_from(rows), min_size=1, max_size=5))
    rows += [copy_of(row, suffix=str(index)) for index, row in enumerate(copies)]

    splits = split_step.assign_splits(rows, options)

    split_names_of_content: dict[str, set[str]] = {}
    for name, split_rows in splits.items():
        for row in split_rows:
            split_names_of_content.setdefault(row.sha256, set()).add(name)
    assert all(len(names) == 1 for names in split_names_of_content.values())
    assert sum(len(split_rows) for split_rows in splits.values()) == len(rows)


def copy_of(row: ManifestRow, *, suffix: str) -> ManifestRow:
    """The same content stored under another file name."""
    return dataclasses.replace(row, path=row.path.replace(".jpg", f"_copy{suffix}.jpg"))


@PROPERTY_SETTINGS
@given(contents=class_contents(), options=split_options())
def test_assign_splits_each_split_has_every_class(contents, options):
    splits = split_step.assign_splits(make_rows(contents), options)

    for name in SPLIT_NAMES:
        assert {row.label for row in splits[name]} == set(contents), name


@PROPERTY_SETTINGS
@given(
    hashes=st.lists(sha256_hex, min_size=1, max_size=2, unique=True),
    options=split_options(),
)
def test_assign_splits_rejects_class_below_three(hashes, options):
    daisy_hashes = [hashlib.sha256(f"daisy {index}".encode()).hexdigest() for index in range(10)]
    assume(not set(hashes) & set(daisy_hashes))
    rows = make_rows({"daisy": daisy_hashes, "rose": hashes})

    with pytest.raises(
        ValueError, match=rf"class 'rose' has {len(hashes)} distinct photo\(s\).*add photos to 'rose'"
    ):
        split_step.assign_splits(rows, options)


def test_assign_splits_counts_duplicates_once():
    rows = make_rows({"rose": ["a" * 64, "b" * 64]})
    rows.append(copy_of(rows[0], suffix="1"))

    with pytest.raises(ValueError, match=r"class 'rose' has 2 distinct photo\(s\)"):
        split_step.assign_splits(rows, SplitOptions())


def test_assign_splits_rejects_content_with_two_labels():
    rows = make_rows({"daisy": ["a" * 64, "b" * 64, "c" * 64], "rose": ["d" * 64, "e" * 64, "f" * 64]})
    rows.append(ManifestRow(path="images/rose/copy.jpg", label="rose", sha256="a" * 64,
                            width=8, height=8, source="flower_photos/rose/copy.jpg"))

    with pytest.raises(ValueError, match=r"photo content a{64} has two labels: 'daisy' .* and 'rose'"):
        split_step.assign_splits(rows, SplitOptions())


def test_assign_splits_seed_changes_assignment():
    rows = make_rows({"daisy": [hashlib.sha256(str(index).encode()).hexdigest() for index in range(50)]})

    first = split_of_each_path(split_step.assign_splits(rows, SplitOptions(seed=0)))
    second = split_of_each_path(split_step.assign_splits(rows, SplitOptions(seed=1)))

    assert first != second


# Validation of options.


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SplitOptions(train_fraction=0.0, validation_fraction=0.5, test_fraction=0.5),
         r"train_fraction=0\.0 is invalid: each fraction must be in \(0, 1\)"),
        (SplitOptions(train_fraction=0.9, validation_fraction=0.0, test_fraction=0.1),
         r"validation_fraction=0\.0 is invalid: each fraction must be in \(0, 1\)"),
        (SplitOptions(train_fraction=1.0, validation_fraction=0.1, test_fraction=0.1),
         r"train_fraction=1\.0 is invalid"),
        (SplitOptions(train_fraction=0.8, validation_fraction=0.1, test_fraction=-0.1),
         r"test_fraction=-0\.1 is invalid"),
        (SplitOptions(train_fraction=float("nan")),
         r"train_fraction=nan is invalid: it must be a number in \(0, 1\)"),
        (SplitOptions(test_fraction=True),
         r"test_fraction=True is invalid: it must be a number"),
        (SplitOptions(train_fraction=0.7, validation_fraction=0.1, test_fraction=0.1),
         r"fractions sum to 0\.9 \(train 0\.7, validation 0\.1, test 0\.1\), but they must sum to 1 within 1e-06"),
        (SplitOptions(seed=1.5), r"seed=1\.5 is invalid: it must be an integer"),
        (SplitOptions(seed="0"), r"seed='0' is invalid: it must be an integer"),
    ],
    ids=["train_zero", "validation_zero", "train_one", "test_negative", "nan", "bool",
         "sum_below_one", "float_seed", "string_seed"],
)
def test_validate_options_rejects(options, message):
    with pytest.raises(ValueError, match=message):
        split_step.validate_options(options)


def test_validate_options_accepts_inexact_sum():
    split_step.validate_options(SplitOptions(train_fraction=0.7, validation_fraction=0.2,
                                             test_fraction=0.1))


# split_dataset on folders.


def write_image_dataset(folder: Path, rows: list[ManifestRow], labels: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.write_manifest(folder / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(folder / artifacts.LABELS_FILE, labels)
    return folder


def output_dirs_under(root: Path) -> dict[str, Path]:
    return {name: root / name for name in SPLIT_NAMES}


def test_split_dataset_validates_options_before_reading(tmp_path):
    options = SplitOptions(train_fraction=0.5, validation_fraction=0.1, test_fraction=0.1)

    with pytest.raises(ValueError, match=r"fractions sum to 0\.7"):
        split_step.split_dataset(tmp_path / "missing", output_dirs_under(tmp_path), options=options)
    assert not (tmp_path / "train").exists()


def test_split_dataset_rejects_wrong_output_keys(tmp_path):
    with pytest.raises(ValueError, match=r"output_dirs has keys \['train'\], but it needs exactly"):
        split_step.split_dataset(tmp_path, {"train": tmp_path / "t"}, options=SplitOptions())


def test_split_dataset_rejects_label_without_photos(tmp_path):
    contents = {"daisy": [f"{index:064x}" for index in range(5)]}
    dataset = write_image_dataset(tmp_path / "images", make_rows(contents), ["daisy", "tulip"])

    with pytest.raises(ValueError, match=r"class 'tulip' has 0 photos.*add photos to 'tulip'"):
        split_step.split_dataset(dataset, output_dirs_under(tmp_path), options=SplitOptions())


def test_split_dataset_rejects_unlisted_label(tmp_path):
    contents = {"daisy": [f"{index:064x}" for index in range(5)]}
    dataset = write_image_dataset(tmp_path / "images", make_rows(contents), ["rose"])

    with pytest.raises(ValueError, match=r"manifest labels \['daisy'\] are missing from labels\.txt"):
        split_step.split_dataset(dataset, output_dirs_under(tmp_path), options=SplitOptions())


def test_split_dataset_writes_layout(tmp_path):
    contents = {
        "daisy": [f"{index:064x}" for index in range(10)],
        "rose": [f"{index + 100:064x}" for index in range(20)],
    }
    rows = make_rows(contents)
    labels = ["daisy", "rose"]
    dataset = write_image_dataset(tmp_path / "images", rows, labels)
    options = SplitOptions(seed=7)

    counts = split_step.split_dataset(
        dataset, output_dirs_under(tmp_path), options=options, dataset_uri="gs://bucket/images"
    )

    assert counts == {
        "train": {"daisy": 8, "rose": 16},
        "validation": {"daisy": 1, "rose": 2},
        "test": {"daisy": 1, "rose": 2},
    }
    written = {name: artifacts.read_manifest(tmp_path / name) for name in SPLIT_NAMES}
    assert sorted((row.path for split_rows in written.values() for row in split_rows)) == sorted(
        row.path for row in rows
    )
    for name in SPLIT_NAMES:
        assert artifacts.read_labels(tmp_path / name) == labels
        info = json.loads((tmp_path / name / artifacts.SPLIT_INFO_FILE).read_text())
        assert info == {
            "split": name,
            "fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
            "seed": 7,
            "num_images": sum(counts[name].values()),
            "class_counts": counts[name],
            "dataset_uri": "gs://bucket/images",
        }


def manifest_from_archive(archive: Path) -> tuple[list[ManifestRow], list[str]]:
    """Rows for each JPEG in a flowers-layout archive, hashed from its bytes (no decoding)."""
    rows = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or not parts[2].endswith(".jpg"):
                continue
            data = tar.extractfile(member).read()
            rows.append(ManifestRow(
                path=f"images/{parts[1]}/{parts[2]}",
                label=parts[1],
                sha256=hashlib.sha256(data).hexdigest(),
                width=0,
                height=0,
                source=member.name,
            ))
    return rows, sorted({row.label for row in rows})


def test_split_dataset_mini_archive(tmp_path, mini_archive):
    rows, labels = manifest_from_archive(mini_archive)
    dataset = write_image_dataset(tmp_path / "images", rows, labels)

    counts = split_step.split_dataset(dataset, output_dirs_under(tmp_path), options=SplitOptions())

    assert len(labels) == 5
    assert len({row.sha256 for row in rows}) == 100
    for label in labels:
        assert (counts["train"][label], counts["validation"][label], counts["test"][label]) == (
            16, 2, 2
        ), label
    split_hashes = [
        {row.sha256 for row in artifacts.read_manifest(tmp_path / name)} for name in SPLIT_NAMES
    ]
    assert not split_hashes[0] & split_hashes[1]
    assert not split_hashes[0] & split_hashes[2]
    assert not split_hashes[1] & split_hashes[2]


# The KFP wrapper, run by the KFP local runner.


def write_synthetic_dataset(dataset: Output[Dataset], photos_per_class: int):
    """Write an image Dataset with a manifest and labels but no image files."""
    import hashlib
    import os
    from pathlib import Path

    from components import artifacts

    os.makedirs(dataset.path)
    rows = [
        artifacts.ManifestRow(
            path=f"images/{label}/{index}.jpg",
            label=label,
            sha256=hashlib.sha256(f"{label} {index}".encode()).hexdigest(),
            width=8,
            height=8,
            source=f"flower_photos/{label}/{index}.jpg",
        )
        for label in ("daisy", "rose")
        for index in range(photos_per_class)
    ]
    artifacts.write_manifest(Path(dataset.path) / artifacts.MANIFEST_FILE, rows)
    artifacts.write_labels(Path(dataset.path) / artifacts.LABELS_FILE, ["daisy", "rose"])


def test_split_component_local_runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    make_dataset = dsl.component(write_synthetic_dataset, base_image="python:3.11", install_kfp_package=False)
    split_op = dsl.component(split_step.split_component, base_image="python:3.11", install_kfp_package=False)

    @dsl.pipeline
    def split_pipeline() -> NamedTuple(
        "Outputs", dataset=Dataset, train_data=Dataset, validation_data=Dataset, test_data=Dataset
    ):
        produced = make_dataset(photos_per_class=10)
        split_task = split_op(
            dataset=produced.outputs["dataset"],
            train_fraction=0.6,
            validation_fraction=0.2,
            test_fraction=0.2,
            seed=3,
        )
        return NamedTuple(
            "Outputs", dataset=Dataset, train_data=Dataset, validation_data=Dataset,
            test_data=Dataset,
        )(
            dataset=produced.outputs["dataset"],
            train_data=split_task.outputs["train_data"],
            validation_data=split_task.outputs["validation_data"],
            test_data=split_task.outputs["test_data"],
        )

    task = split_pipeline()

    dataset_uri = task.outputs["dataset"].uri
    expected = {"train_data": 6, "validation_data": 2, "test_data": 2}
    for output_name, per_class in expected.items():
        artifact = task.outputs[output_name]
        assert artifact.metadata["num_images"] == 2 * per_class, output_name
        assert artifact.metadata["class_counts"] == {"daisy": per_class, "rose": per_class}
        assert artifact.metadata["dataset_uri"] == dataset_uri
        info = json.loads((Path(artifact.path) / artifacts.SPLIT_INFO_FILE).read_text())
        assert info["dataset_uri"] == dataset_uri
        assert len(artifacts.read_manifest(artifact.path)) == 2 * per_class
