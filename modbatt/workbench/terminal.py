"""Text that reaches a terminal: untrusted strings escaped, and a screen redrawn in place.

Strings that come from a file (a DBC, a log, a ledger), a bus or a peer can hold control
characters. Printed as they are, ESC sequences (ECMA-48) set the window title, clear the screen,
move the cursor or colour fake output, and a newline or carriage return forges whole lines. So
:func:`escape` is applied to every such string before it is printed: C0 controls (0x00-0x1F),
DEL and C1 controls (0x80-0x9F) become ``\\xNN``, and the Unicode characters that reorder or
hide text (bidirectional overrides and isolates, line and paragraph separators; Boucher and
Anderson, "Trojan Source", 2021) become ``\\uNNNN``. Everything else passes unchanged, so ordinary
text, including non-ASCII names and units such as "°C", reads as before.

:class:`Screen` redraws a block of lines in place on a terminal with ECMA-48 cursor controls
(clear once, then cursor home, erase to end of line, erase below), the way ``cantools monitor`` and
``can.viewer`` keep one table on screen; it writes nothing but plain lines when the output is
not a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TextIO

__all__ = ["Screen", "escape", "is_terminal"]

_BIDI_AND_SEPARATORS = "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_UNSAFE = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI_AND_SEPARATORS}]")


def _replace(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: object) -> str:
    """``text`` (made a string) with every control character shown as an escape.

    A backslash is left as it is: the escapes are for a person reading a terminal, not a
    reversible encoding.
    """
    return _UNSAFE.sub(_replace, str(text))


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (not a pipe or a file)."""
    isatty: Callable[[], bool] | None = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


# ECMA-48 control sequences: cursor to row 1 column 1, erase to end of line, erase below.
_HOME = "\x1b[H"
_ERASE_LINE = "\x1b[K"
_ERASE_BELOW = "\x1b[J"
_CLEAR = "\x1b[2J"


class Screen:
    """A block of lines kept on a terminal, redrawn in place; plain lines on anything else.

    Lines handed to :meth:`draw` are escaped here, so callers may pass untrusted text.
    """

    def __init__(self, stream: TextIO, *, in_place: bool | None = None) -> None:
        self.stream = stream
        self.in_place = is_terminal(stream) if in_place is None else in_place
        self._drawn = False

    def draw(self, lines: Sequence[str]) -> None:
        """Show ``lines``: over the previous block on a terminal, appended otherwise."""
        if self.in_place:
            body = "".join(f"{escape(line)}{_ERASE_LINE}\n" for line in lines)
            first = "" if self._drawn else _CLEAR  # the first table starts on a clean screen
            self.stream.write(f"{first}{_HOME}{body}{_ERASE_BELOW}")
        else:
            self.stream.write("".join(f"{escape(line)}\n" for line in lines))
            self.stream.write("\n")
        self.stream.flush()
        self._drawn = True

    def line(self, text: str) -> None:
        """One escaped line after the block (the summary, a note)."""
        self.stream.write(f"{escape(text)}\n")
        self.stream.flush()
