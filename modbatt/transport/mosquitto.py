"""A private mosquitto broker in a child process, for tests, the mixed demo and workbench runs.

Writes a minimal configuration (one listener on 127.0.0.1, anonymous clients, no persistence) to a
temporary directory, starts ``mosquitto -c`` on a free port and waits until the port accepts
connections. :meth:`MosquittoBroker.stop` / :meth:`MosquittoBroker.restart` exist so tests can drop
the broker in the middle of a request and bring it back on the same port.

Only the process this object started is ever signalled (by its own pid).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError, TransportError

__all__ = ["INSTALL_HINT", "MosquittoBroker", "find_mosquitto", "free_port"]

#: What to tell a person whose machine lacks the broker.
INSTALL_HINT = "install mosquitto: apt-get install mosquitto"
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, or None (``MODBATT_MOSQUITTO`` wins, then PATH, then sbin)."""
    explicit = os.environ.get("MODBATT_MOSQUITTO")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (mosquitto binds it itself, so a tiny race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """One mosquitto child process on ``host:port`` (a free port unless given)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, executable: str | None = None) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise ConfigError(f"mosquitto is not installed ({INSTALL_HINT})")
        self.executable = exe
        self.host = host
        self.port = port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="modbatt-mosquitto-"))
        self.config_path = self._dir / "mosquitto.conf"
        self.log_path = self._dir / "mosquitto.log"
        # No persistence: a restart must look like a broker that lost every session and message.
        self.config_path.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
            f"log_dest file {self.log_path}\n",
            encoding="utf-8",
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self, timeout: float = 5.0) -> MosquittoBroker:
        """Start the broker and wait (bounded) until it accepts TCP connections."""
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [self.executable, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _accepts(self.host, self.port):
            if self._proc.poll() is not None:
                raise TransportError(f"mosquitto exited with {self._proc.returncode}: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TransportError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its temporary directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-3:])
        return "no log"

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
