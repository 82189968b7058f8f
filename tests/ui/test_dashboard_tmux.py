"""The dashboard in a real terminal: run it in a detached tmux window, read the pane like a person would.

Each test starts its own tmux server (a unique ``-L`` socket name), so nothing is shared with other tmux
users or other tests, and kills it at the end.
"""

from __future__ import annotations

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

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.target)

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


def test_real_demo_in_a_real_terminal() -> None:
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
        # Ctrl-C stops it cleanly and gives the terminal back
        pane.tmux("send-keys", "-t", pane.target, "C-c")
        assert pane.wait_exit(timeout=60.0) == 0, pane.capture()
        assert "Traceback" not in pane.capture()
