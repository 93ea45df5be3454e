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
