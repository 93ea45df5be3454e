"""Backbones that the image classifier can train on: a registry of TFLite Model Maker's presets,
plus any TF Hub image feature-vector SavedModel given by URI.

The registry copies the names, TF Hub handles and input sizes of Model Maker's image classifier
presets (tensorflow/examples, tensorflow_examples/lite/model_maker/core/task/model_spec/
image_spec.py). Each backbone takes float32 RGB in [0, 1] and returns one feature vector per
image, so the same head and preprocessing fit all of them.

A backbone URI is one of:
- an http(s) address that tensorflow_hub resolves itself (tfhub.dev, or a Kaggle model address
  https://www.kaggle.com/models/...);
- a gs:// folder that contains the SavedModel, for clusters without internet access;
- a local folder that contains the SavedModel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

from components import storage

logger = logging.getLogger(__name__)

CUSTOM = "custom"
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 1024

SAVED_MODEL_FILE = "saved_model.pb"
# Written last into a cached copy of a gs:// backbone, so a copy cut short is never reused.
CACHE_COMPLETE_FILE = ".complete"

_REMOTE_SCHEMES = ("http://", "https://")
_GCS_SCHEME = "gs://"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A backbone: its registry name (or "custom"), URI and input size in pixels."""

    name: str
    uri: str
    input_height: int
    input_width: int


def _efficientnet_lite(index: int, size: int) -> ModelSpec:
    return ModelSpec(
        name=f"efficientnet_lite{index}",
        uri=f"https://tfhub.dev/tensorflow/efficientnet/lite{index}/feature-vector/2",
        input_height=size,
        input_width=size,
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _efficientnet_lite(0, 224),
        _efficientnet_lite(1, 240),
        _efficientnet_lite(2, 260),
        _efficientnet_lite(3, 280),
        _efficientnet_lite(4, 300),
        ModelSpec(
            name="mobilenet_v2",
            uri="https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4",
            input_height=224,
            input_width=224,
        ),
        ModelSpec(
            name="resnet_50",
            uri="https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/4",
            input_height=224,
            input_width=224,
        ),
    )
}


def get_model_spec(name: str, *, backbone_uri: str = "", input_size: int = 0) -> ModelSpec:
    """Return the spec of a registry backbone, or of a custom one when name is "custom" or "".

    For a registry name, a non-empty backbone_uri replaces the handle (for example the same
    weights mirrored in a bucket) and a nonzero input_size replaces the height and width.
    A custom backbone needs both backbone_uri and input_size.
    """
    if name not in REGISTRY and name not in (CUSTOM, ""):
        raise ValueError(
            f"model spec {name!r} is unknown: use one of {sorted(REGISTRY)}, or {CUSTOM!r} "
            "with backbone_uri and input_size"
        )
    if input_size:
        validate_input_size(input_size)
    if backbone_uri:
        validate_backbone_uri(backbone_uri)

    if name in REGISTRY:
        spec = REGISTRY[name]
        size_override = {"input_height": input_size, "input_width": input_size} if input_size else {}
        return dataclasses.replace(spec, uri=backbone_uri or spec.uri, **size_override)

    if not backbone_uri or not input_size:
        raise ValueError(
            f"a {CUSTOM!r} model spec needs backbone_uri and input_size, but got "
            f"backbone_uri={backbone_uri!r} and input_size={input_size!r}: set both, for example "
            "backbone_uri='gs://bucket/backbones/my_feature_vector' and input_size=224"
        )
    return ModelSpec(name=CUSTOM, uri=backbone_uri, input_height=input_size, input_width=input_size)


def validate_input_size(input_size: int) -> None:
    """Raise ValueError unless input_size is an integer number of pixels in the allowed range."""
    if isinstance(input_size, bool) or not isinstance(input_size, int):
        raise ValueError(f"input_size={input_size!r} is invalid: it must be an integer, such as 224")
    if not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE:
        raise ValueError(
            f"input_size={input_size} is out of range: it must be {MIN_INPUT_SIZE} to "
            f"{MAX_INPUT_SIZE} pixels; use the backbone's native size, such as 224"
        )


def validate_backbone_uri(uri: str) -> None:
    """Raise ValueError unless uri is an http(s) address, a gs:// folder or a local path."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https", "gs"):
        if not parts.netloc:
            raise ValueError(f"backbone_uri={uri!r} is invalid: it names no host or bucket")
        return
    if parts.scheme:
        raise ValueError(
            f"backbone_uri={uri!r} has the unsupported scheme {parts.scheme!r}: use an https:// "
            "TF Hub or Kaggle address, a gs:// folder or a local folder path"
        )


def resolve_backbone(uri: str, cache_dir: str | Path) -> str:
    """Return a handle that tensorflow_hub can load without cloud credentials of its own.

    A gs:// folder is copied into cache_dir, and the local path of the copy is returned. A
    complete copy from an earlier call is reused. The copy goes through components.storage
    because TensorFlow 2.21 reads gs:// paths only from the fixed endpoint www.googleapis.com,
    so it ignores STORAGE_EMULATOR_HOST. A local folder must contain a SavedModel. An http(s)
    address is returned unchanged.
    """
    validate_backbone_uri(uri)
    if uri.startswith(_REMOTE_SCHEMES):
        return uri
    if uri.startswith(_GCS_SCHEME):
        return str(_copy_gcs_folder(uri, Path(cache_dir)))

    if not (Path(uri) / SAVED_MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"backbone folder {uri} has no {SAVED_MODEL_FILE}: point backbone_uri at the folder "
            "of a TF2 SavedModel in the TF Hub image feature-vector form"
        )
    return uri


def _copy_gcs_folder(uri: str, cache_dir: Path) -> Path:
    prefix = uri.rstrip("/") + "/"
    target = cache_dir / hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:16]
    if (target / CACHE_COMPLETE_FILE).is_file():
        logger.info("Using the cached copy of backbone %s at %s", uri, target)
        return target

    uris = storage.list_uris(prefix)
    if prefix + SAVED_MODEL_FILE not in uris:
        raise FileNotFoundError(
            f"backbone folder {uri} has no {SAVED_MODEL_FILE} (found {len(uris)} object(s) under it): copy "
            "the whole SavedModel folder into the bucket, for example with "
            f"'gcloud storage cp -r my_backbone {uri}'"
        )

    # Download next to the target and rename it into place, so a reader never sees half a copy.
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=cache_dir))
    try:
        for item in uris:
            destination = staging / item[len(prefix):]
            destination.parent.mkdir(parents=True, exist_ok=True)
            storage.download(item, destination)
        (staging / CACHE_COMPLETE_FILE).touch()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Copied backbone %s (%d files) to %s", uri, len(uris), target)
    return target


def default_cache_dir() -> Path:
    """Return TFHUB_CACHE_DIR if set, else <temp dir>/tfhub_modules, as tensorflow_hub does."""
    return Path(os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")


def load_backbone_layer(spec: ModelSpec, *, trainable: bool, cache_dir: str | Path = ""):
    """Build a tf_keras layer of the spec's backbone; returns a tensorflow_hub.KerasLayer.

    cache_dir is where copies of gs:// backbones go, default_cache_dir() when empty.
    """
    # Imported here so that validating a spec does not load TensorFlow.
    import tensorflow_hub as hub

    handle = resolve_backbone(spec.uri, cache_dir or default_cache_dir())
    logger.info("Loading backbone %s from %s (trainable=%s)", spec.name, handle, trainable)
    return hub.KerasLayer(handle, trainable=trainable)
