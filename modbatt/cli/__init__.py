"""The ``modbatt`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module's
handler returns an exit code. A :class:`~modbatt.errors.ModbattError` (a user mistake or a
failed verification) is printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from ..errors import ModbattError
from ..workbench.terminal import escape

# Sub-command modules, in the order `modbatt --help` lists them.
_COMMAND_MODULES = (
    "demo",
    "run",
    "sweep",
    "entity",
    "controller",
    "sim",
    "ledger",
    "audit",
    "cert",
    "dbc",
    "vectors",
    "spec",
    "monitor",
    "decode",
    "attack",
    "bench",
)

EXIT_OK = 0
EXIT_FAILED = 1  # a check ran and failed (e.g. a ledger that does not verify)
EXIT_USAGE = 2  # the user asked for something unusable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modbatt",
        description="Workbench for the Modbatt trust protocol (binding, pairing, validation, CAN).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}_cmd":
                continue  # a command whose module is absent is left out
            raise
        module.register(sub)
    return parser


class _EscapedStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Library warnings quote files and peers (python-can, cantools, asammdf): escaped, on the
    current ``sys.stderr``, as Python's last-resort handler would print them unescaped."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass  # always the current sys.stderr

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


def _escape_library_warnings() -> None:
    """Stand in for the last-resort handler, unless something configured logging (a host program, pytest)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_EscapedStderr())


def main(argv: Sequence[str] | None = None) -> int:
    _escape_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or EXIT_OK)
    except ModbattError as exc:
        reason = getattr(exc, "reason", None)
        text = str(exc)
        if reason is not None and not text.startswith(str(reason)):
            text = f"{reason}: {text}"  # the classified reason always leads
        print(f"modbatt {args.command}: error: {escape(text)}", file=sys.stderr)
        return EXIT_FAILED if reason is not None else EXIT_USAGE
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        # A file or device the user named cannot be used: one line, not a traceback.
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"modbatt {args.command}: error: {escape(f'{exc.strerror or exc}{where}')}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("modbatt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
