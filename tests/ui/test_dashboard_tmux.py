"""The dashboard in a real terminal: run it in a detached tmux window, press keys and read the pane like a
person would.

Each test starts its own tmux server (a unique ``-L`` socket name), so nothing is shared with other tmux
users or other tests, and kills it at the end. With ``STREAMEMG_SCREENSHOTS=DIR`` the demo test also saves
what the terminal showed (colours included) as PNG pictures in DIR, rendered by headless Chromium: that is how
the pictures in ``docs/`` were made.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "examples" / "fake_dashboard.py"
TMUX = shutil.which("tmux")
WIDTH, HEIGHT = 160, 50
LATENCY = re.compile(r"\d+\.\d/\d+\.\d")  # a "p50/p99" figure, e.g. 9.8/24.1
EXIT_MARK = re.compile(r"\[exit status (\d+)\]")

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install -y tmux)")


class Pane:
    """A command running in a detached tmux window of a fixed size, on a private tmux server."""

    def __init__(self, socket: str, target: str) -> None:
        self.socket = socket
        self.target = target

    def tmux(self, *args: str, check: bool = True) -> str:
        assert TMUX is not None
        proc = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=10, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def capture(self, escapes: bool = False) -> str:
        """The visible screen as text (with ``escapes``: with its colours as ANSI escape sequences)."""
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", self.target)

    def send(self, *keys: str) -> None:
        """Press keys (tmux key names: ``Enter``, ``Escape``, ``Down``, ``PageDown``, or literal text)."""
        for key in keys:
            self.tmux("send-keys", "-t", self.target, key)
            time.sleep(0.05)  # one key per read, as a person types

    def dead(self) -> tuple[bool, int | None]:
        """(has the command exited, its exit status)."""
        out = self.tmux("display-message", "-p", "-t", self.target, "#{pane_dead} #{pane_dead_status}").split()
        if not out or out[0] != "1":
            return False, None
        return True, int(out[1]) if len(out) > 1 and out[1].lstrip("-").isdigit() else None

    def wait_for(self, ready: Callable[[str], bool], timeout: float, what: str) -> str:
        """Poll the pane until ``ready(text)``; fail after ``timeout`` seconds showing the last screen."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.capture()
            if ready(text):
                return text
            dead, status = self.dead()
            if dead:
                text = self.capture()
                if ready(text):
                    return text
                raise AssertionError(f"the command exited (status {status}) before showing {what}:\n{text}")
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout:.0f} s; the pane shows:\n{text}")

    def wait_exit(self, timeout: float) -> int:
        """Wait until the command has exited; return its exit status.

        The status comes from the ``[exit status N]`` line the wrapping shell prints after the command (tmux's
        own ``pane_dead_status`` is sometimes never filled in), else from tmux when the shell itself died.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = EXIT_MARK.search(self.capture())
            if found:
                return int(found.group(1))
            dead, status = self.dead()
            if dead and status is not None:
                return status
            time.sleep(0.2)
        raise AssertionError(f"the command did not exit within {timeout:.0f} s; the pane shows:\n{self.capture()}")


@contextmanager
def tmux_pane(argv: list[str], width: int = WIDTH, height: int = HEIGHT) -> Iterator[Pane]:
    """Run ``argv`` in a new detached tmux window (``width`` x ``height``); the pane stays after exit."""
    tag = uuid.uuid4().hex[:10]
    pane = Pane(socket=f"streamemg-test-{tag}", target=f"dash-{tag}")
    env_prefix = ["env", "-u", "COLUMNS", "-u", "LINES", "TERM=xterm-256color"]
    if os.environ.get("STREAMEMG_DATA"):
        env_prefix.append(f"STREAMEMG_DATA={os.environ['STREAMEMG_DATA']}")
    socket_path = ""
    command = f'cd {shlex.quote(str(REPO))} && {shlex.join(env_prefix + argv)}; echo "[exit status $?]"'
    try:
        # remain-on-exit keeps the pane (and what it shows) after the command ends
        pane.tmux(
            "-f", "/dev/null",
            "new-session", "-d", "-s", pane.target, "-x", str(width), "-y", str(height), command,
            ";", "set-option", "-t", pane.target, "remain-on-exit", "on",
        )  # fmt: skip
        socket_path = pane.tmux("display-message", "-p", "#{socket_path}", check=False).strip()
        yield pane
    finally:
        pane.tmux("kill-server", check=False)
        if socket_path:  # tmux leaves its socket file behind
            Path(socket_path).unlink(missing_ok=True)


def screenshot(ansi: str, path: Path, width: int = WIDTH) -> bool:
    """Render a captured screen (text with ANSI colours) to a PNG: rich draws it as SVG, Chromium takes the
    picture. False when Chromium is not installed."""
    from rich.console import Console
    from rich.text import Text

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    lines = ansi.rstrip("\n").split("\n")
    while lines and not re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]).strip():  # the unused rows under a short table
        lines.pop()
    console.print(Text.from_ansi("\n".join(lines)), end="")
    svg = path.with_suffix(".svg")
    svg.write_text(console.export_svg(title="streamemg"), encoding="utf-8")
    size = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg.read_text(encoding="utf-8"))
    w, h = (int(float(size.group(1))) + 1, int(float(size.group(2))) + 1) if size else (1400, 900)
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={path}",
         f"--window-size={w},{h}", svg.resolve().as_uri()],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    svg.unlink()
    return path.exists()


def has_all(*needles: str, pattern: re.Pattern[str] | None = None) -> Callable[[str], bool]:
    def ready(text: str) -> bool:
        return all(n in text for n in needles) and (pattern is None or pattern.search(text) is not None)

    return ready


def test_fake_dashboard_in_a_real_terminal() -> None:
    with tmux_pane([sys.executable, str(FAKE), "--duration", "5", "--streams", "12"]) as pane:
        text = pane.wait_for(
            has_all(
                "streamemg",
                "normal-001",
                "als-002",
                "myopathy-003",
                "Normal",
                "ALS",
                "Myopathy",
                "Label",
                "p50/p99 ms",
                "withheld: clipping",
                "reconnecting",
                "Ctrl-C to stop",
                pattern=LATENCY,
            ),
            timeout=30.0,
            what="the dashboard with its streams, classes and latency",
        )
        lines = text.splitlines()
        assert len(lines) <= HEIGHT and all(len(line) <= WIDTH for line in lines)
        header = next(line for line in lines if line.lstrip().startswith("Stream"))
        assert header.index("Normal") < header.index("ALS") < header.index("Myopathy") < header.index("Label")
        row = next(line for line in lines if "als-002" in line)
        assert re.search(r"ALS \d+%", row), row  # a label with its confidence
        assert LATENCY.search(row), row
        # --duration ends it by itself, cleanly, and the terminal is given back (alternate screen left)
        assert pane.wait_exit(timeout=30.0) == 0
        after = pane.capture()
        assert "dashboard:" in after and "frames" in after
        assert "normal-001" not in after  # the table was on the alternate screen, which is gone


def test_256_streams_are_paged_and_summarised() -> None:
    with tmux_pane([sys.executable, str(FAKE), "--duration", "5", "--streams", "256"]) as pane:
        text = pane.wait_for(
            has_all("streams 256", "page 1/", "16 reconnecting", "Myopathy", pattern=LATENCY),
            timeout=30.0,
            what="a paged table of 256 streams with a summary",
        )
        lines = text.splitlines()
        assert len(lines) <= HEIGHT
        header_at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Stream"))
        first_row = lines[header_at + 1]
        assert "reconnecting" in first_row  # problems first
        assert re.search(r"labels \d+ Normal · \d+ ALS · \d+ Myopathy · 32 withheld", text)  # clipping + low activity
        assert pane.wait_exit(timeout=30.0) == 0


def test_ctrl_c_stops_the_dashboard_cleanly() -> None:
    with tmux_pane([sys.executable, str(FAKE), "--streams", "3"]) as pane:
        pane.wait_for(has_all("normal-001", "Ctrl-C to stop"), timeout=30.0, what="the dashboard")
        pane.tmux("send-keys", "-t", pane.target, "C-c")
        assert pane.wait_exit(timeout=20.0) == 0
        after = pane.capture()
        assert "Traceback" not in after
        assert "streams 3" in after  # the final summary printed after leaving the alternate screen


BRAILLE = re.compile("[\u2801-\u28ff]")


def table_rows(text: str) -> list[str]:
    """The stream rows under the table's column header."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip(" ▶").startswith("Stream"))
    rows = []
    for line in lines[at + 1 :]:
        if not re.match(r"^[ ▶]\S", line):
            break
        rows.append(line)
    return rows


def selected_name(text: str) -> str:
    """The name of the stream on the row marked ``▶``."""
    row = next((r for r in table_rows(text) if r.startswith("▶")), None)
    assert row is not None, f"no selected row on screen:\n{text}"
    return row[1:].split()[0]


def test_keys_select_filter_open_a_stream_and_go_back() -> None:
    with tmux_pane([sys.executable, str(FAKE), "--streams", "12"]) as pane:
        text = pane.wait_for(has_all("normal-001", "Enter open", "? keys"), timeout=30.0, what="the table with keys")
        names = [r.lstrip(" ▶").split()[0] for r in table_rows(text)]
        assert len(names) == 12, text
        assert selected_name(text) == names[0]
        pane.send("j", "j", "Down")
        text = pane.wait_for(lambda t: selected_name(t) == names[3], timeout=10.0, what="the selection 3 rows down")
        pane.send("k")
        pane.wait_for(lambda t: selected_name(t) == names[2], timeout=10.0, what="the selection one row up")
        pane.send("End")
        pane.wait_for(lambda t: selected_name(t) == names[-1], timeout=10.0, what="the selection on the last row")
        pane.send("Home")
        pane.wait_for(lambda t: selected_name(t) == names[0], timeout=10.0, what="the selection on the first row")
        # filter by name: only the matching rows stay, the footer says how many
        pane.send("/", "m", "y", "o")
        text = pane.wait_for(has_all("filter /myo▌"), timeout=10.0, what="the filter being typed")
        pane.send("Enter")
        text = pane.wait_for(has_all("filter 'myo': 4 of 12"), timeout=10.0, what="the applied filter")
        rows = table_rows(text)
        assert rows and all("myopathy-" in r for r in rows), text
        target = selected_name(text)
        assert target.startswith("myopathy-")
        # open the stream view of the selected stream
        pane.send("Enter")
        text = pane.wait_for(
            has_all(f"│ {target} │", "signal", "estimate history", "spectrogram", "Esc back"),
            timeout=10.0,
            what=f"the stream view of {target}",
        )
        assert "µV" in text and BRAILLE.search(text), text  # a trace with a µV scale
        assert re.search(r"rolling Normal \d+% ALS \d+% Myopathy \d+%", text), text
        assert "windows" in text and "p50/p99" in text and "seq gaps" in text and "reconnects" in text
        # Esc goes back to the same selection under the same filter
        pane.send("Escape")
        text = pane.wait_for(has_all("Enter open", "filter 'myo'"), timeout=10.0, what="the table again")
        assert selected_name(text) == target
        # the keys are listed on ?, which closes on ? again
        pane.send("?")
        pane.wait_for(has_all("filter streams by name", "open the selected stream's view"), 10.0, "the keys")
        pane.send("?")
        pane.wait_for(has_all("Enter open"), timeout=10.0, what="the table after the keys")
        # Esc clears the filter; q quits cleanly
        pane.send("Escape")
        text = pane.wait_for(lambda t: "filter 'myo'" not in t and "normal-001" in t, 10.0, "the unfiltered table")
        pane.send("q")
        assert pane.wait_exit(timeout=20.0) == 0
        assert "Traceback" not in pane.capture()


def test_without_a_terminal_on_stdin_the_table_takes_no_keys() -> None:
    """Input from a pipe (a service, a script): the display is the plain self-paging table, and keys do nothing."""
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))} --streams 6 --duration 6 < /dev/null"
    with tmux_pane(["sh", "-c", command]) as pane:
        text = pane.wait_for(has_all("normal-001", "Ctrl-C to stop"), timeout=30.0, what="the table")
        assert "Enter open" not in text and "▶" not in text
        pane.send("/", "x", "Enter")
        time.sleep(1.0)
        after = pane.capture()
        assert "filter" not in after and "normal-001" in after
        assert pane.wait_exit(timeout=30.0) == 0


def test_paging_follows_the_selection() -> None:
    with tmux_pane([sys.executable, str(FAKE), "--streams", "256"], height=30) as pane:
        text = pane.wait_for(has_all("page 1/", "Enter open"), timeout=30.0, what="a paged table")
        per_page = len(table_rows(text))
        pane.send("PageDown")
        text = pane.wait_for(has_all("page 2/"), timeout=10.0, what="page 2 after PageDown")
        assert table_rows(text).index(next(r for r in table_rows(text) if r.startswith("▶"))) == 0
        assert f"rows {per_page + 1}-" in text
        pane.send("PageUp")
        pane.wait_for(has_all("page 1/"), timeout=10.0, what="page 1 after PageUp")
        pane.send("q")
        assert pane.wait_exit(timeout=20.0) == 0


def _demo_command() -> list[str] | None:
    """How to run ``streamemg demo`` with this interpreter, or None while the command does not exist."""
    for argv in ([sys.executable, "-m", "streamemg"], [str(Path(sys.executable).with_name("streamemg"))]):
        try:
            proc = subprocess.run([*argv, "demo", "--help"], capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and "--duration" in proc.stdout:
            return argv
    return None


@pytest.mark.slow
def test_real_demo_pick_a_patient_and_look_at_it() -> None:
    """The first thing a new user does: run the demo, pick patient-2, look at its signal, go back, quit."""
    argv = _demo_command()
    if argv is None:
        pytest.skip("`streamemg demo --duration S` is not available yet in this installation")
    with tmux_pane([*argv, "demo", "--duration", "60"]) as pane:
        text = pane.wait_for(
            has_all("streamemg", "Stream", "Normal", "ALS", "Myopathy", "Label", "live", pattern=LATENCY),
            timeout=90.0,
            what="the demo's dashboard with three live streams and a latency figure",
        )
        lines = text.splitlines()
        header_at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Stream"))
        rows = [line for line in lines[header_at + 1 :] if "live" in line]
        assert len(rows) >= 3, text
        # every row has a label with a confidence, a quality flag, "untrained" or is still waiting
        for row in rows:
            assert re.search(r"(Normal|ALS|Myopathy) \d+%|withheld: |untrained|waiting", row), row
        assert "Traceback" not in text
        assert "↑↓ select" in text and "Enter open" in text and "? keys" in text  # the keys are on screen
        shots = os.environ.get("STREAMEMG_SCREENSHOTS")
        # pick patient-2 with the arrow keys
        for _ in range(3):
            if selected_name(pane.capture()) == "patient-2":
                break
            pane.send("Down")
            time.sleep(0.3)
        pane.wait_for(lambda t: selected_name(t) == "patient-2", timeout=10.0, what="patient-2 selected")
        if shots:
            time.sleep(6.0)  # a few more seconds of history for the picture
            assert screenshot(pane.capture(escapes=True), Path(shots) / "dashboard-table.png")
        pane.send("Enter")
        text = pane.wait_for(
            lambda t: "│ patient-2 │" in t and "attention" in t and "ln µV²/Hz" in t and "100%┤" in t,
            timeout=30.0,
            what="patient-2's stream view with its trace, spectrogram, attention and estimate history",
        )
        assert BRAILLE.search(text) and re.search(r"[µm]V┤", text), text  # the trace and its scale (µV or mV)
        assert "▀" in text  # the spectrogram heat map
        assert re.search(r"attention\s*[▁▂▃▄▅▆▇█]{10,}", text), text  # attention weights over the frames
        assert "Esc back" in text  # the way back is on screen
        if shots:
            time.sleep(4.0)
            assert screenshot(pane.capture(escapes=True), Path(shots) / "dashboard-stream-view.png")
        pane.send("Escape")
        text = pane.wait_for(has_all("Enter open", "patient-1", "patient-3"), timeout=10.0, what="the table again")
        assert selected_name(text) == "patient-2"
        # q stops it cleanly (the same path as Ctrl-C) and gives the terminal back
        pane.send("q")
        assert pane.wait_exit(timeout=60.0) == 0, pane.capture()
        assert "Traceback" not in pane.capture()
