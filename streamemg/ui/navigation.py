"""What the dashboard's keys do: a small state machine over the streams on screen (pure, unit-tested).

Screens: ``"table"`` (all streams, one selected), ``"stream"`` (the selected stream's view), ``"help"`` (the
keys). In the table, ``/`` starts typing a name filter (shown in the footer while it is typed).

The selection is a stream *id*, not a row number, so it stays on the same stream while rows re-sort (problem
streams move to the top). Until the first key is pressed the table's pages turn on their own (a wall
display); after that the page is the one holding the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["KEYS_HELP", "Navigator", "Screen", "matches_filter"]

Screen = Literal["table", "stream", "help"]

#: (keys, what they do) in the order the help screen lists them.
KEYS_HELP: tuple[tuple[str, str], ...] = (
    ("↑ ↓  j k", "move the selection one stream"),
    ("PgUp PgDn", "move one page"),
    ("Home End  g G", "first / last stream"),
    ("Enter  →  l", "open the selected stream's view"),
    ("Esc  ←  h  q", "back to the table (from a stream view or this help)"),
    ("↑ ↓  j k (stream view)", "previous / next stream"),
    ("/", "filter streams by name (Enter keeps it, Esc clears it)"),
    ("?", "show or hide these keys"),
    ("q  Ctrl-C", "quit (on the table)"),
)


def matches_filter(name: str, pattern: str) -> bool:
    """Case-insensitive substring match of a stream name; every name matches an empty pattern."""
    return not pattern or pattern.casefold() in name.casefold()


@dataclass
class Navigator:
    """Mutable UI state driven by keys.

    Attributes:
        screen: what is on screen.
        selected: id of the selected stream (None before there is one).
        filter: the applied name filter ("" = none).
        editing: the filter text being typed after ``/``; None when not typing.
        interacted: a key was pressed (the table stops turning pages on its own).
        quit_requested: ``q`` or Ctrl-C on the table: the driver stops the run.
    """

    screen: Screen = "table"
    selected: str | None = None
    filter: str = ""
    editing: str | None = None
    interacted: bool = False
    quit_requested: bool = False

    @property
    def active_filter(self) -> str:
        """The filter that applies now: what is being typed, else the applied one."""
        return self.editing if self.editing is not None else self.filter

    def index_of_selection(self, order: Sequence[str]) -> int:
        """Row of the selected stream in ``order`` (ids in display order); 0 when it is not there."""
        if self.selected is None:
            return 0
        try:
            return order.index(self.selected)
        except ValueError:
            return 0

    def sync(self, order: Sequence[str]) -> None:
        """Keep the selection on a stream that is shown: the first one when there is none or it left."""
        if order and (self.selected is None or self.selected not in order):
            self.selected = order[0]

    def handle(self, key: str, order: Sequence[str], per_page: int) -> None:
        """Apply one key.

        Args:
            key: a key name from :func:`streamemg.ui.keys.parse_keys`.
            order: ids of the streams the table shows now, in display order (after the filter).
            per_page: table rows per page (for PgUp / PgDn), at least 1.
        """
        self.interacted = True
        if self.editing is not None:
            self._edit(key)
            return
        if self.screen == "help":
            if key in ("?", "escape", "q", "h", "left", "enter"):
                self.screen = "table"
            return
        if key == "?":
            self.screen = "help"
            return
        if self.screen == "stream":
            if key in ("escape", "q", "h", "left", "backspace"):
                self.screen = "table"
            elif key in ("down", "j", "up", "k"):
                self._move(order, 1 if key in ("down", "j") else -1)
            return
        # the table
        if key in ("q", "ctrl-c"):
            self.quit_requested = True
        elif key in ("down", "j"):
            self._move(order, 1)
        elif key in ("up", "k"):
            self._move(order, -1)
        elif key == "pagedown":
            self._move(order, max(1, per_page))
        elif key == "pageup":
            self._move(order, -max(1, per_page))
        elif key in ("home", "g"):
            self._move_to(order, 0)
        elif key in ("end", "G"):
            self._move_to(order, len(order) - 1)
        elif key in ("enter", "right", "l"):
            if self.selected is not None and self.selected in order:
                self.screen = "stream"
        elif key == "/":
            self.editing = self.filter
        elif key == "escape" and self.filter:
            self.filter = ""

    def _edit(self, key: str) -> None:
        assert self.editing is not None
        if key == "enter":
            self.filter, self.editing = self.editing, None
        elif key == "escape":
            self.filter, self.editing = "", None
        elif key == "backspace":
            self.editing = self.editing[:-1]
        elif key == "ctrl-u":
            self.editing = ""
        elif len(key) == 1 and key.isprintable():
            self.editing += key

    def _move(self, order: Sequence[str], step: int) -> None:
        if not order:
            return
        if self.selected is None or self.selected not in order:
            self.selected = order[0]
            return
        self._move_to(order, order.index(self.selected) + step)

    def _move_to(self, order: Sequence[str], index: int) -> None:
        if order:
            self.selected = order[max(0, min(len(order) - 1, index))]
