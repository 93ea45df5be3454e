"""Fixtures shared by the test modules: the real photo archives and the pretrained backbone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
MINI_ARCHIVE = SHARED_DIR / "data" / "flower_photos_mini.tgz"
DEV_ARCHIVE = SHARED_DIR / "data" / "flower_photos_dev.tgz"
PRETRAINED_BACKBONE = SHARED_DIR / "backbones" / "efficientnet_lite0_feature_vector"

# The KFP local runner starts each component with "python3"; with use_venv=False it substitutes
# sys.executable, but put this interpreter's folder first on PATH too, for any child process.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def mini_archive() -> Path:
    """The 100-photo archive (5 classes of 20) in the public flowers archive's layout."""
    if not MINI_ARCHIVE.is_file():
        pytest.fail(f"test data missing: {MINI_ARCHIVE}")
    return MINI_ARCHIVE


DEFAULT_SOURCE_BUCKET = "download.tensorflow.org"
DEFAULT_SOURCE_OBJECT = "example_images/flower_photos.tgz"


@pytest.fixture(scope="session")
def gcs_server():
    """A fake-gcs-server on 127.0.0.1 that STORAGE_EMULATOR_HOST points at for the whole session.

    It serves the mini archive at the default source URI,
    gs://download.tensorflow.org/example_images/flower_photos.tgz. Yields the GcsEmulator.
    """
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    emulator.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    try:
        bucket = emulator.client().create_bucket(DEFAULT_SOURCE_BUCKET)
        bucket.blob(DEFAULT_SOURCE_OBJECT).upload_from_filename(str(MINI_ARCHIVE))
        yield emulator
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """A new, empty bucket on the emulator with a unique name; yields the bucket name."""
    import uuid

    name = f"test-{uuid.uuid4().hex[:16]}"
    gcs_server.client().create_bucket(name)
    return name
