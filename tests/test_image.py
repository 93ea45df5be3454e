"""The component image installs exactly the locked versions.

No Docker engine runs here, so these tests read images/Dockerfile and check the lock it installs
against the project's declared dependencies and this environment, which the Makefile builds from
the same lock.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "images" / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"


def read_lock(path=LOCK) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, separator, version = line.partition("==")
        assert separator, f"{path.name}: {line!r} is not pinned with =="
        pins[canonicalize_name(name)] = Version(version)
    return pins


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def pip_installs() -> list[list[str]]:
    commands = []
    for keyword, rest in dockerfile_instructions():
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                commands.append(words)
    return commands


def test_image_base_matches_python_version():
    base = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    requires_python = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]

    assert base == ["python:3.11-slim"]
    assert ">=3.11" in requires_python


def test_image_installs_only_locked_packages():
    installs = pip_installs()

    assert installs, "images/Dockerfile runs no pip install"
    for words in installs:
        assert "--no-deps" in words, f"{' '.join(words)} may pull versions that are not in the lock"
    requirement_files = [words[words.index("-r") + 1] for words in installs if "-r" in words]
    assert requirement_files == ["requirements.lock"]
    copied = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert any(rest.split()[0] == "requirements.lock" for rest in copied)


def test_image_checks_installed_set_is_consistent():
    runs = " ".join(rest for keyword, rest in dockerfile_instructions() if keyword == "RUN")

    assert "pip check" in runs


def test_image_runs_as_non_root_user():
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]

    assert users, "images/Dockerfile sets no USER, so steps would run as root"
    assert users[-1] not in ("root", "0")


def test_lock_satisfies_declared_dependencies():
    pins = read_lock()
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is a dependency but not in requirements.lock"
        assert pins[name] in requirement.specifier, f"lock pins {name}=={pins[name]}, outside {requirement.specifier}"


def test_lock_contains_every_transitive_dependency():
    # With --no-deps pip installs nothing beyond the lock, so each locked package's own
    # requirements must be locked too, at a version that satisfies them.
    pins = read_lock()
    environment = default_environment() | {"extra": ""}

    for name in pins:
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in pins, f"{name} requires {requirement}, which requirements.lock lacks"
            assert requirement.specifier.contains(pins[dependency], prereleases=True), (
                f"{name} requires {requirement}, but the lock pins {dependency}=={pins[dependency]}"
            )


@pytest.mark.parametrize("lock_name", ["requirements.lock", "requirements-test.lock"])
def test_environment_matches_lock(lock_name):
    for name, version in read_lock(REPO_ROOT / lock_name).items():
        installed = Version(importlib.metadata.version(name))
        assert installed == version, f"{name} {installed} is installed, the lock pins {version}: run make venv"
