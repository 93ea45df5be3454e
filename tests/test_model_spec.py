"""Tests of the backbone registry, custom backbone URIs and loading backbones as tf_keras layers."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from components import model_spec, storage
from components.model_spec import ModelSpec, get_model_spec
from tests.conftest import PRETRAINED_BACKBONE
from tests.tiny_backbone import save_tiny_backbone

EXPECTED_SIZES = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
    "efficientnet_lite3": 280,
    "efficientnet_lite4": 300,
    "mobilenet_v2": 224,
    "resnet_50": 224,
}


@pytest.mark.parametrize(("name", "size"), sorted(EXPECTED_SIZES.items()))
def test_get_model_spec_registry_size(name, size):
    spec = get_model_spec(name)

    assert spec.name == name
    assert (spec.input_height, spec.input_width) == (size, size)


def test_registry_names_match_model_maker():
    assert sorted(model_spec.REGISTRY) == sorted(EXPECTED_SIZES)


def test_get_model_spec_efficientnet_lite0_handle():
    spec = get_model_spec("efficientnet_lite0")

    assert spec.uri == "https://tfhub.dev/tensorflow/efficientnet/lite0/feature-vector/2"


def test_get_model_spec_unknown_name_lists_names():
    with pytest.raises(ValueError, match=r"model spec 'efficientnet_b0' is unknown: use one of "
                       r"\['efficientnet_lite0', .*'mobilenet_v2', 'resnet_50'\], or 'custom'"):
        get_model_spec("efficientnet_b0")


def test_get_model_spec_overrides_uri_and_size(tmp_path):
    spec = get_model_spec("efficientnet_lite0", backbone_uri=str(tmp_path), input_size=192)

    assert spec == ModelSpec(name="efficientnet_lite0", uri=str(tmp_path), input_height=192,
                             input_width=192)


def test_get_model_spec_overrides_uri_keeps_size():
    spec = get_model_spec("efficientnet_lite2", backbone_uri="gs://models/lite2")

    assert spec.uri == "gs://models/lite2"
    assert spec.input_height == 260


@pytest.mark.parametrize("name", ["custom", ""])
def test_get_model_spec_custom(name):
    spec = get_model_spec(name, backbone_uri="gs://models/mine", input_size=128)

    assert spec == ModelSpec(name="custom", uri="gs://models/mine", input_height=128, input_width=128)


def test_get_model_spec_custom_requires_size():
    with pytest.raises(ValueError, match=r"a 'custom' model spec needs backbone_uri and input_size, "
                       r"but got backbone_uri='gs://models/mine' and input_size=0"):
        get_model_spec("custom", backbone_uri="gs://models/mine")


def test_get_model_spec_custom_requires_uri():
    with pytest.raises(ValueError, match=r"needs backbone_uri and input_size, but got backbone_uri=''"):
        get_model_spec("", input_size=224)


@pytest.mark.parametrize(
    ("input_size", "message"),
    [
        (31, r"input_size=31 is out of range: it must be 32 to 1024 pixels"),
        (1025, r"input_size=1025 is out of range"),
        (-224, r"input_size=-224 is out of range"),
        (224.0, r"input_size=224\.0 is invalid: it must be an integer"),
        (True, r"input_size=True is invalid: it must be an integer"),
    ],
)
def test_get_model_spec_rejects_input_size(input_size, message):
    with pytest.raises(ValueError, match=message):
        get_model_spec("mobilenet_v2", input_size=input_size)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/backbone", r"backbone_uri='s3://bucket/backbone' has the unsupported scheme 's3'"),
        ("gs:///backbone", r"backbone_uri='gs:///backbone' is invalid: it names no host or bucket"),
        ("https://", r"backbone_uri='https://' is invalid: it names no host or bucket"),
    ],
)
def test_get_model_spec_rejects_backbone_uri(uri, message):
    with pytest.raises(ValueError, match=message):
        get_model_spec("custom", backbone_uri=uri, input_size=224)


def test_model_spec_is_frozen():
    spec = get_model_spec("resnet_50")

    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.uri = "elsewhere"


def test_resolve_backbone_passes_https_through(tmp_path):
    uri = "https://www.kaggle.com/models/tensorflow/efficientnet/tensorFlow2/lite0-feature-vector/2"

    assert model_spec.resolve_backbone(uri, tmp_path) == uri
    assert list(tmp_path.iterdir()) == []


def test_resolve_backbone_local_folder_without_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"backbone folder {re.escape(str(tmp_path))} has no saved_model\.pb"):
        model_spec.resolve_backbone(str(tmp_path), tmp_path / "cache")


@pytest.fixture(scope="module")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return save_tiny_backbone(tmp_path_factory.mktemp("backbones") / "tiny", feature_dim=8)


def test_load_backbone_layer_local_tiny(tiny_backbone_dir):
    import tensorflow as tf

    spec = get_model_spec("custom", backbone_uri=str(tiny_backbone_dir), input_size=32)
    layer = model_spec.load_backbone_layer(spec, trainable=True)

    features = layer(tf.zeros([2, 32, 32, 3]))
    assert features.shape == (2, 8)
    assert layer.trainable
    assert len(layer.trainable_weights) == 2


def upload_folder(folder: Path, uri: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(uri, path.relative_to(folder).as_posix()))


def test_load_backbone_layer_gcs_folder(tiny_backbone_dir, gcs_bucket, tmp_path):
    import tensorflow as tf

    uri = f"gs://{gcs_bucket}/backbones/tiny"
    upload_folder(tiny_backbone_dir, uri)
    spec = get_model_spec("custom", backbone_uri=uri, input_size=32)

    layer = model_spec.load_backbone_layer(spec, trainable=False, cache_dir=tmp_path)

    features = layer(tf.ones([1, 32, 32, 3]))
    expected = tf.saved_model.load(str(tiny_backbone_dir))(tf.ones([1, 32, 32, 3]), False)
    np.testing.assert_allclose(features.numpy(), expected.numpy(), rtol=1e-6)
    assert not layer.trainable_weights


def test_resolve_backbone_gcs_reuses_complete_copy(tiny_backbone_dir, gcs_bucket, tmp_path):
    uri = f"gs://{gcs_bucket}/backbones/tiny"
    upload_folder(tiny_backbone_dir, uri)

    first = model_spec.resolve_backbone(uri, tmp_path)
    model_file = Path(first) / "saved_model.pb"
    model_file.write_bytes(b"marker")
    second = model_spec.resolve_backbone(uri + "/", tmp_path)

    assert second == first
    assert model_file.read_bytes() == b"marker"
    assert (Path(first) / model_spec.CACHE_COMPLETE_FILE).is_file()


def test_resolve_backbone_gcs_without_saved_model(gcs_bucket, tmp_path):
    uri = f"gs://{gcs_bucket}/backbones/empty"
    storage.write_bytes(f"{uri}/variables/variables.index", b"not a model")

    with pytest.raises(FileNotFoundError, match=rf"backbone folder {uri} has no saved_model\.pb "
                       r"\(found 1 object\(s\) under it\)"):
        model_spec.resolve_backbone(uri, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_backbone_layer_pretrained_efficientnet():
    import tensorflow as tf

    spec = get_model_spec("efficientnet_lite0", backbone_uri=str(PRETRAINED_BACKBONE))

    layer = model_spec.load_backbone_layer(spec, trainable=False)

    features = layer(tf.random.uniform([1, 224, 224, 3], seed=0))
    assert features.shape == (1, 1280)
    assert np.isfinite(features.numpy()).all()
