"""Keyboard input for the dashboard: a terminal key parser and a reader on the event loop.

The dashboard draws with ``rich.live.Live``, which only writes; keys are read here. :class:`KeyReader` puts
the terminal in *cbreak* mode (keys arrive one by one and are not echoed, while Ctrl-C still raises SIGINT,
so it keeps taking the pipeline's ordinary stop path) and watches standard input with
``loop.add_reader``: no thread and no polling, and nothing runs when no key is pressed. The terminal mode is
restored on exit, also after an error.

:func:`parse_keys` turns the bytes a terminal sends into key names (pure, unit-tested): printable text is
itself (``"j"``, ``"/"``, ``"é"``), special keys have names (``"up"``, ``"pageup"``, ``"enter"``,
``"escape"``, ...).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TextIO

__all__ = ["KEY_NAMES", "KeyReader", "parse_keys"]

log = logging.getLogger(__name__)

#: Escape sequences (after ESC) of the keys the dashboard uses, in xterm's normal and application modes.
_SEQUENCES: dict[str, str] = {
    "[A": "up",
    "[B": "down",
    "[C": "right",
    "[D": "left",
    "OA": "up",
    "OB": "down",
    "OC": "right",
    "OD": "left",
    "[H": "home",
    "[F": "end",
    "OH": "home",
    "OF": "end",
    "[1~": "home",
    "[4~": "end",
    "[7~": "home",
    "[8~": "end",
    "[5~": "pageup",
    "[6~": "pagedown",
    "[2~": "insert",
    "[3~": "delete",
    "[Z": "backtab",
}
_CONTROL: dict[str, str] = {
    "\r": "enter",
    "\n": "enter",
    "\t": "tab",
    "\x7f": "backspace",
    "\x08": "backspace",
    "\x03": "ctrl-c",
    "\x04": "ctrl-d",
    "\x15": "ctrl-u",
}
#: Every special key name :func:`parse_keys` can return (anything else is a printable character).
KEY_NAMES: frozenset[str] = frozenset({*_SEQUENCES.values(), *_CONTROL.values(), "escape", "unknown"})


def parse_keys(text: str) -> tuple[list[str], str]:
    """Split terminal input into keys.

    Args:
        text: characters read from the terminal (decoded), possibly several keys at once.

    Returns:
        ``(keys, rest)``: the complete keys in order, and an unfinished escape sequence at the end (``"\\x1b["``
        followed by parameters but no final byte) to be prefixed to the next read. A lone ESC (not followed
        by ``[`` or ``O``) is the Escape key: a terminal writes a whole sequence at once, so a read that ends
        right after ESC came from the Escape key. Unknown sequences give ``"unknown"``; other control
        characters are dropped.
    """
    keys: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\x1b":
            if i + 1 >= n:
                keys.append("escape")
                i += 1
                continue
            intro = text[i + 1]
            if intro == "\x1b":  # ESC ESC: the first is the Escape key
                keys.append("escape")
                i += 1
                continue
            if intro == "O":
                if i + 2 >= n:
                    return keys, text[i:]
                keys.append(_SEQUENCES.get("O" + text[i + 2], "unknown"))
                i += 3
                continue
            if intro == "[":
                j = i + 2
                while j < n and not ("\x40" <= text[j] <= "\x7e"):  # parameter bytes up to the final byte
                    j += 1
                if j >= n:
                    return keys, text[i:]
                body = text[i + 1 : j + 1]
                key = _SEQUENCES.get(body)
                if key is None and ";" in body:  # modified key, e.g. ESC [ 1 ; 5 A (Ctrl-Up): the plain key
                    key = _SEQUENCES.get("[" + body[-1]) or _SEQUENCES.get(body.split(";")[0] + "~")
                keys.append(key or "unknown")
                i = j + 1
                continue
            keys.append("escape")  # ESC followed by an ordinary key (Alt-x): take it as Escape, then the key
            i += 1
            continue
        if ch in _CONTROL:
            keys.append(_CONTROL[ch])
        elif ch.isprintable():
            keys.append(ch)
        i += 1
    return keys, ""


class KeyReader:
    """Reads keys from a terminal on the running event loop and hands each to ``on_key``.

    Use as a context manager inside a coroutine (it needs the running loop)::

        with KeyReader(dashboard.on_key) as keys:
            if not keys.active: ...  # no terminal on stdin: keys are not available

    Args:
        on_key: called on the event loop with each key name (see :func:`parse_keys`).
        stream: the input (default ``sys.stdin``); keys are read only when it is a terminal.

    Attributes:
        active: True while keys are being read (False when the input is not a terminal, e.g. a pipe).
    """

    def __init__(self, on_key: Callable[[str], None], stream: TextIO | None = None) -> None:
        self.on_key = on_key
        self.stream = stream if stream is not None else sys.stdin
        self.active = False
        self._fd = -1
        self._saved: list[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def __enter__(self) -> Self:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self
        if not os.isatty(fd):
            return self
        try:
            import termios
            import tty
        except ImportError:  # not a POSIX terminal (Windows): no keys, the dashboard still draws
            return self
        try:
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd, termios.TCSANOW)
        except termios.error as exc:
            log.info("keys unavailable: the terminal refused cbreak mode (%s)", exc)
            self._saved = None
            return self
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        try:
            self._loop.add_reader(fd, self._readable)
        except (NotImplementedError, RuntimeError) as exc:  # a loop without add_reader
            log.info("keys unavailable: %s", exc)
            self._restore()
            return self
        self.active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and restore the terminal mode. Idempotent."""
        if self.active and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        self.active = False
        self._restore()

    def feed(self, data: bytes) -> None:
        """Parse ``data`` as terminal input and deliver the keys (what the reader does with each read)."""
        text = self._pending + self._decoder.decode(data)
        keys, self._pending = parse_keys(text)
        for key in keys:
            self.on_key(key)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # the terminal went away: stop reading, keep the display
            log.info("keys: reading the terminal failed (%s); keys are off", exc)
            self.close()
            return
        if not data:  # end of input
            self.close()
            return
        self.feed(data)

    def _restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None or self._fd < 0:
            return
        import termios

        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
