"""SoftHSM for PKCS#11 tests: a token in a temporary SOFTHSM2_CONF, made once per test session.

Import the fixture into a test module (``from conftest_softhsm import softhsm  # noqa: F401``).
Without SoftHSM (Debian/Ubuntu ``apt-get install softhsm2``, macOS ``brew install softhsm``) or
python-pkcs11 the tests skip with the reason, unless ``MODBATT_REQUIRE_SOFTHSM=1`` (CI) turns the
skip into a failure. ``MODBATT_SOFTHSM_MODULE`` overrides where ``libsofthsm2.so`` is looked for.

SoftHSM reads its configuration once per process (``C_Initialize``), so there is one token per
session; tests keep apart by key-label prefix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SoftHsm", "softhsm"]

_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
_HINT = "install SoftHSM (apt-get install softhsm2) and python-pkcs11 (pip install 'modbatt[hsm]')"


@dataclass(frozen=True)
class SoftHsm:
    module: str
    token_label: str
    user_pin: str


def _unavailable(reason: str) -> None:
    if os.environ.get("MODBATT_REQUIRE_SOFTHSM") == "1":
        pytest.fail(f"MODBATT_REQUIRE_SOFTHSM=1 but {reason} ({_HINT})")
    pytest.skip(f"{reason} ({_HINT})")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """One initialised SoftHSM token for the session."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        _unavailable("python-pkcs11 is not installed")
    override = os.environ.get("MODBATT_SOFTHSM_MODULE")
    module = next((m for m in ((override,) if override else _MODULES) if m and Path(m).exists()), None)
    util = shutil.which("softhsm2-util") or next(
        (u for u in ("/usr/bin/softhsm2-util", "/usr/local/bin/softhsm2-util") if Path(u).exists()), None
    )
    if module is None or util is None:
        _unavailable("SoftHSM (libsofthsm2.so and softhsm2-util) was not found")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    hsm = SoftHsm(module, "modbatt-test", "271828")
    try:
        subprocess.run(
            [util, "--init-token", "--free", "--label", hsm.token_label, "--so-pin", "31415926", "--pin",
             hsm.user_pin],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield hsm
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
