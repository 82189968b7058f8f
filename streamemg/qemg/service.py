"""QEMG of live streams in a separate process at lower CPU priority, so classification always comes first.

The MUAP analysis of a stream costs about as much CPU as its classification, and it is pure Python and numpy
on small arrays: in a thread of the pipeline's process it holds the interpreter lock for as long as the event
loop does, and every stream it analyses is taken from the loop's one core. So live streams are analysed in one
child process (``python -m streamemg.qemg.service``) started on the first live stream and shared by all of them
(or several, ``QemgSettings.processes``, streams dealt to them in turn)::

    pipeline process                                       QEMG process (SCHED_IDLE, nice +10)
    RemoteQemg.process(samples) -> exact blocks (2 s) --->  QemgAnalyser per stream (the same code and blocks
    RemoteQemg.summary_dict()   <- latest measurement <---  as inline, so the same result), measured every
                                                            summary_every_s of signal

The child runs at the lowest CPU priority (``QemgSettings.sched_idle``, ``QemgSettings.nice``): on a busy machine
the scheduler gives the pipeline's threads the CPU first and the analysis what is left. A stream with more than
``MAX_QUEUED_BLOCKS`` blocks in flight drops new blocks and counts them (:attr:`RemoteQemg.dropped_blocks`;
``streamemg bench`` reports the share analysed): the estimates then carry the last measurement, and the analysis
resumes as soon as the child catches up. Its measures over a dropped block's gap stay valid (the templates are
means; an interval that spans a gap falls out of the firing-rate statistics as an outlier), only based on less
signal.

Messages are pickled tuples over two pipes (``multiprocessing.connection.Connection``): to the child
``("open", id, fs, channels, settings, phase)``, ``("block", id, samples)``, ``("want", id, on)``, ``("fresh", id)``,
``("close", id)``; from it ``("ack", id, samples_seen, summary | None, summary_dict | None, skipped)`` per block
(the dict when a new measurement was taken, the summary with units and templates too while the stream is wanted:
it is the bulk of the traffic and only the stream view needs it; ``skipped`` when it was not analysed because the
pipeline was behind, see :func:`set_yielding`), ``("full", id, summary, summary_dict)`` on ``want``,
``("fresh", id, samples_seen, summary, summary_dict)`` and ``("error", text)``. One
thread sends (a full pipe never blocks the event loop: the queue in front of it is bounded), one receives. If the
child dies, the streams keep being classified; their QEMG stops, and the error is logged once.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import mmap
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .analyser import QemgAnalyser, QemgSettings, QemgSummary
from .blocks import BlockGatherer

log = logging.getLogger(__name__)

#: Blocks of one stream that may be in flight (sent, not yet analysed); beyond this new blocks are dropped.
MAX_QUEUED_BLOCKS = 4
#: Samples waiting for the sender thread, all streams together (bytes); beyond this new blocks are dropped. Control
#: messages (a stream opening, asking for its units) are never dropped and never wait.
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: A QEMG process that died is replaced after this many seconds (the streams' analyses start again from scratch).
RESTART_S = 5.0
#: Units and templates of a stream come back from the QEMG process while summary() was asked for within this (s).
WANT_S = 10.0


class QemgService:
    """The child process and the two threads that talk to it (one per parent process: :func:`service`)."""

    def __init__(self, nice: int, idle: bool = True) -> None:
        work_r, work_w = os.pipe()
        res_r, res_w = os.pipe()
        env = dict(os.environ)
        # the child imports this same package, whether installed or a source checkout on sys.path
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # the analysis does not use BLAS; its idle threads spin
        env.setdefault("OMP_NUM_THREADS", "1")
        # one shared byte: 1 while the pipeline is behind (set_yielding); the child reads it before every block
        self._pause_file = tempfile.TemporaryFile()
        self._pause_file.write(b"\0")
        self._pause_file.flush()
        self.paused = mmap.mmap(self._pause_file.fileno(), 1)
        self.paused[0] = int(_YIELDING)
        pause_fd = self._pause_file.fileno()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(work_r), str(res_w), str(int(nice)), "idle" if idle else "normal",
             str(pause_fd)],
            pass_fds=(work_r, res_w, pause_fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env,
        )
        os.close(work_r)
        os.close(res_w)
        self._out = Connection(work_w, readable=False)
        self._in = Connection(res_r, writable=False)
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.queued_bytes = 0  # samples in the queue (the caller adds, the sender thread takes away)
        self._bytes_lock = threading.Lock()
        self._clients: dict[int, RemoteQemg] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.alive = True
        self.error: str | None = None
        self.died_at: float | None = None  # time.monotonic() when it was found dead
        self._fresh: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._sender = threading.Thread(target=self._send_loop, name="streamemg-qemg-send", daemon=True)
        self._sender.start()
        threading.Thread(target=self._recv_loop, name="streamemg-qemg-recv", daemon=True).start()
        threading.Thread(target=self._stderr_loop, name="streamemg-qemg-stderr", daemon=True).start()

    # ------------------------------------------------------------------ parent side
    def open(self, client: RemoteQemg) -> int:
        cid = next(self._ids)
        with self._lock:
            self._clients[cid] = client
        self.put(("open", cid, client.fs, client.n_channels, client.settings, client.phase))
        return cid

    def forget(self, cid: int) -> None:
        """Free stream ``cid``'s state here and in the child."""
        with self._lock:
            self._clients.pop(cid, None)
        self.put(("close", cid))

    def put(self, msg: tuple[Any, ...]) -> bool:
        """Queue a control message for the child (never waits); False when the child is gone."""
        if not self.alive:
            return False
        self._queue.put(msg)
        return True

    def put_block(self, cid: int, block: npt.NDArray[np.floating], force: bool = False) -> bool:
        """Queue a block of samples for the child (never waits); False (dropped) when the child is gone or, unless
        ``force``, when ``MAX_QUEUED_BYTES`` of samples are already waiting."""
        if not self.alive:
            return False
        with self._bytes_lock:
            if not force and self.queued_bytes + block.nbytes > MAX_QUEUED_BYTES:
                return False
            self.queued_bytes += block.nbytes
        self._queue.put(("block", cid, block))
        return True

    def fresh(self, cid: int, timeout: float) -> tuple[QemgSummary, dict[str, Any]] | None:
        """Ask the child to measure stream ``cid`` now (after every block sent so far); wait for the answer."""
        done = threading.Event()
        box: list[Any] = []
        with self._lock:
            self._fresh[cid] = (done, box)
        if not self.put(("fresh", cid)) or not done.wait(timeout):
            return None
        return box[0] if box else None

    def _send_loop(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:  # stop: the child reads to the end of the pipe, then exits
                self._out.close()
                break
            try:
                self._out.send(msg)
            except (OSError, ValueError):  # the child is gone
                self._died("the QEMG process stopped taking work")
                break
            finally:
                if msg[0] == "block":
                    with self._bytes_lock:
                        self.queued_bytes -= msg[2].nbytes

    def _recv_loop(self) -> None:
        while True:
            try:
                msg = self._in.recv()
            except (EOFError, OSError):
                self._died("the QEMG process exited")
                return
            kind = msg[0]
            if kind == "ack":
                _, cid, seen, summ, d, skipped = msg
                client = self._clients.get(cid)
                if client is not None:
                    client._acked(seen, summ, d, skipped)
            elif kind == "full":
                _, cid, summ, d = msg
                client = self._clients.get(cid)
                if client is not None:
                    client._full, client._dict = summ, d
            elif kind == "fresh":
                _, cid, seen, summ, d = msg
                with self._lock:
                    waiter = self._fresh.pop(cid, None)
                client = self._clients.get(cid)
                if client is not None:
                    client.samples_seen = seen
                if waiter is not None:
                    waiter[1].append((summ, d))
                    waiter[0].set()
            elif kind == "error":
                log.error("QEMG analysis failed in the QEMG process; block skipped:\n%s", msg[1])

    def _stderr_loop(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                log.warning("QEMG process: %s", text)

    def _died(self, what: str) -> None:
        if not self.alive:
            return
        self.alive = False
        self.died_at = time.monotonic()
        code = self.proc.poll()
        self.error = f"{what} (exit status {code})" if code is not None else what
        log.error("%s: live streams go on being classified; their QEMG restarts in a new process within %g s",
                  self.error, RESTART_S)
        with self._lock:
            waiters = list(self._fresh.values())
            self._fresh.clear()
        for done, _ in waiters:
            done.set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the child: it finishes what it was sent (within ``timeout``), then exits."""
        self.alive = False
        self._queue.put(None)  # ends the sender (also when it still waits after the child died on its own)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # the sender may still be writing a block the child never read: with the child gone that write fails
        # and the sender ends; its pipe is closed only after that (closing it under a write would crash the thread)
        self._sender.join(timeout)
        for conn in (self._out, self._in):
            conn.close()
        self.paused.close()
        self._pause_file.close()


def supported() -> bool:
    """Whether QEMG processes can run here (they talk over inherited pipe descriptors: POSIX only; elsewhere the
    pipeline analyses live streams inline)."""
    return os.name == "posix"


_SERVICES: dict[int, QemgService] = {}
_SERVICE_LOCK = threading.Lock()
_NEXT_SLOT = itertools.count()
_YIELDING = False  # set_yielding(): classification is behind, live streams' QEMG waits


def set_yielding(on: bool) -> None:
    """Make live streams' QEMG give way to classification (``on``) or take work again.

    While yielding, :meth:`RemoteQemg.process` drops new blocks before they cost the pipeline anything (counted in
    :attr:`RemoteQemg.dropped_blocks`), and the QEMG processes skip the blocks they were already sent (counted in
    :attr:`RemoteQemg.skipped_blocks`; they read a byte shared with this process before each block): a busy QEMG
    process slows the pipeline's threads even at the lowest CPU priority (docs/qemg.md, "Cost"). The pipeline
    calls this from its watchdog (``QemgSettings.yield_load``)."""
    global _YIELDING
    on = bool(on)
    if on == _YIELDING:
        return
    _YIELDING = on
    for svc in list(_SERVICES.values()):
        with contextlib.suppress(ValueError):  # a closed service
            svc.paused[0] = int(on)


class YieldGate:
    """When live streams' QEMG gives way to classification, from how busy the pipeline's event loop is.

    :meth:`tick`, called by the loop once per watchdog period, measures the loop thread's CPU time over the period
    as a share of the wall time, smooths it (half the way each period) and says whether to yield: from the start
    (until a period shows room) and whenever the share is above ``load``, until it is back under ``load - gap``
    (hysteresis, so the analysis is not switched on and off every period). The event loop is what runs out first
    as streams are added; a busy QEMG process slows it even at the lowest CPU priority."""

    def __init__(self, load: float, gap: float = 0.1) -> None:
        self.load = float(load)
        self.gap = float(gap)
        self.level: float | None = None
        self.on = True
        self._last: tuple[float, float] | None = None

    def tick(self, wall: float | None = None, cpu: float | None = None) -> bool:
        """Update from the loop thread's CPU time (``time.thread_time()``) and the wall clock
        (``time.perf_counter()``), read now unless given; the new state."""
        wall = time.perf_counter() if wall is None else wall
        cpu = time.thread_time() if cpu is None else cpu
        if self._last is not None and wall > self._last[0]:
            share = (cpu - self._last[1]) / (wall - self._last[0])
            self.level = share if self.level is None else 0.5 * self.level + 0.5 * share
            self.on = self.level > (self.load - self.gap if self.on else self.load)
        self._last = (wall, cpu)
        return self.on


def default_processes() -> int:
    """QEMG processes when ``QemgSettings.processes`` is 0: the cores the pipeline's event loop and inference
    thread leave (at least one)."""
    return max(1, (os.cpu_count() or 1) - 2)


def service(nice: int, slot: int = 0, idle: bool = True) -> QemgService:
    """QEMG process number ``slot`` of this process, started on first use (and stopped at interpreter exit); one
    that was closed is replaced, one that died at most once every ``RESTART_S`` (until then the dead one is
    returned)."""
    with _SERVICE_LOCK:
        svc = _SERVICES.get(slot)
        # first use, closed, or died at least RESTART_S ago: a new process
        if svc is None or (not svc.alive and (svc.died_at is None or time.monotonic() - svc.died_at >= RESTART_S)):
            svc = _SERVICES[slot] = QemgService(nice, idle)
            atexit.register(svc.close)
        return svc


def child_pids() -> list[int]:
    """Process ids of the QEMG processes that are running."""
    return [svc.proc.pid for svc in list(_SERVICES.values()) if svc.proc.poll() is None]


class RemoteQemg:
    """The pipeline's handle on one live stream's analysis in the QEMG process (same interface as
    :class:`QemgAnalyser` for what the pipeline uses: :meth:`process`, :meth:`summary`, :meth:`summary_dict`)."""

    def __init__(self, fs: float, n_channels: int, settings: QemgSettings | None = None, phase: float = 0.0) -> None:
        self.settings = settings or QemgSettings()
        self.fs = float(fs)
        self.n_channels = int(n_channels)
        self.phase = float(phase) % 1.0
        self.blocks = BlockGatherer(self.fs, self.settings.block_s, self.phase)
        self.dropped_blocks = 0
        self.sent_blocks = 0
        self.samples_seen = 0
        self._acks = 0  # blocks answered (written by the receiver thread only; sent_blocks by the caller only)
        self.skipped_blocks = 0  # of those, skipped by the QEMG process while the pipeline was behind
        self._lost = 0  # blocks in flight when a QEMG process died
        empty = QemgSummary((), float("nan"), (), self.n_channels, 0.0)
        self._full = empty  # the latest measurement with its units and templates (only while someone looks)
        self._dict: dict[str, Any] = {**empty.to_dict(), "flags": {}}  # its compact form (always)
        self._wanted_at: float | None = None  # when summary() was last asked for (the stream view)
        n = self.settings.processes or default_processes()
        self.slot = next(_NEXT_SLOT) % n  # streams are dealt to the QEMG processes in turn
        self._service = service(self.settings.nice, self.slot, self.settings.sched_idle)
        self._id = self._service.open(self)

    def process(self, raw: npt.NDArray[np.floating]) -> None:
        """Take the next samples, float (n, C) µV (unfiltered); full blocks go to the QEMG process."""
        blocks = self.blocks.add(raw)
        if not blocks:
            return
        if not self._service.alive:
            self._reattach()
        if self._wanted_at is not None and time.monotonic() - self._wanted_at > WANT_S:
            self._service.put(("want", self._id, False))  # nobody looks at this stream's units any more
            self._wanted_at = None
        for block in blocks:
            if _YIELDING or self.in_flight >= MAX_QUEUED_BLOCKS or not self._service.put_block(self._id, block):
                self.dropped_blocks += 1  # the QEMG process is behind: a gap rather than an unbounded queue
                continue
            self.sent_blocks += 1

    def _reattach(self) -> None:
        """The QEMG process died: move to its replacement once there is one (the analysis starts afresh there)."""
        svc = service(self.settings.nice, self.slot, self.settings.sched_idle)
        if svc is not self._service and svc.alive:
            self._service = svc
            self._lost = self.sent_blocks - self._acks  # what was in flight is lost with the old process
            self._id = svc.open(self)
            self._wanted_at = None

    def _acked(self, seen: int, summ: QemgSummary | None, d: dict[str, Any] | None, skipped: bool = False) -> None:
        self._acks += 1
        self.skipped_blocks += int(skipped)
        self.samples_seen = seen
        if summ is not None:
            self._full = summ
        if d is not None:
            self._dict = d  # one reference swap

    @property
    def alive(self) -> bool:
        """Whether this stream's QEMG process is running."""
        return self._service.alive

    @property
    def analysed_blocks(self) -> int:
        """Blocks the QEMG process has analysed."""
        return self._acks - self.skipped_blocks

    @property
    def in_flight(self) -> int:
        """Blocks sent to the QEMG process and not yet analysed."""
        return self.sent_blocks - self._acks - self._lost

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every block sent so far was analysed; False on timeout or if the QEMG process died."""
        deadline = time.monotonic() + timeout
        while self.in_flight > 0 and self._service.alive and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.in_flight == 0

    def summary(self, fresh: bool = False, timeout: float = 30.0) -> QemgSummary:
        """The latest measurement with its units (templates, discharge times); with ``fresh``, one taken now after
        every sample given so far (the block in progress cut short, as :meth:`QemgAnalyser.summary` does) was
        analysed: waits for the QEMG process.

        Units and templates come over from the QEMG process only while someone asks for them (the stream view),
        and for ``WANT_S`` after: the first call asks and returns what is there; the latest arrives at once."""
        if fresh:
            rest = self.blocks.take_rest()
            if rest is not None and self._service.put_block(self._id, rest, force=True):
                self.sent_blocks += 1
            got = self._service.fresh(self._id, timeout)
            if got is not None:
                self._full, self._dict = got
        elif self._wanted_at is None:
            if self._service.put(("want", self._id, True)):
                self._wanted_at = time.monotonic()
        else:
            self._wanted_at = time.monotonic()
        return self._full

    def summary_dict(self) -> dict[str, Any]:
        """The latest measurement in the compact JSON form estimates carry as ``qemg`` (with ``flags``)."""
        return self._dict

    def close(self) -> None:
        """Free this stream's state in the QEMG process (what is still in flight is not reported back; the last
        measurement stays readable here)."""
        self._service.forget(self._id)


# ---------------------------------------------------------------------------------------------- the child


def _serve(work: Connection, results: Connection, paused: mmap.mmap | None = None) -> None:
    """Answer the parent's messages until its end of the work pipe closes; ``paused``: the shared byte that is 1
    while the pipeline is behind (blocks are then answered as skipped, not analysed)."""
    analysers: dict[int, QemgAnalyser] = {}
    wanted: set[int] = set()  # streams whose units and templates go back with every new measurement
    while True:
        try:
            msg = work.recv()
        except EOFError:
            return
        kind, cid = msg[0], msg[1]
        try:
            if kind == "block" and paused is not None and paused[0]:  # the pipeline is behind: no analysis for now
                results.send(("ack", cid, analysers[cid].samples_seen, None, None, True))
            elif kind == "block":
                an = analysers[cid]
                before = an._latest
                an.process(msg[2])
                latest = an._latest
                if latest is not None and latest is not before:
                    results.send(("ack", cid, an.samples_seen, latest[0] if cid in wanted else None, latest[1], False))
                else:
                    results.send(("ack", cid, an.samples_seen, None, None, False))
            elif kind == "open":
                _, cid, fs, n_channels, settings, phase = msg
                analysers[cid] = QemgAnalyser(fs, n_channels, settings, phase)
            elif kind == "fresh":
                an = analysers[cid]
                summ = an.summary(fresh=True)
                results.send(("fresh", cid, an.samples_seen, summ, an.summary_dict()))
            elif kind == "want":
                if msg[2]:
                    wanted.add(cid)
                    an = analysers[cid]
                    if an._latest is not None:
                        results.send(("full", cid, an._latest[0], an._latest[1]))
                else:
                    wanted.discard(cid)
            elif kind == "close":
                analysers.pop(cid, None)
                wanted.discard(cid)
        except Exception:  # one stream's failure must not stop the others' analysis
            results.send(("error", traceback.format_exc()))
            if kind == "block":
                failed = analysers.get(cid)
                results.send(("ack", cid, failed.samples_seen if failed is not None else 0, None, None, False))


#: The child's program. Its CPU priority is lowered first, before it imports numpy and scipy (about a second of
#: CPU): ``nice`` more niceness and, on Linux, ``SCHED_IDLE``: it runs only on CPU no other task wants, and a
#: pipeline thread that wakes up preempts it at once (with niceness alone the pipeline's p99 latency at 256
#: streams rose from 19 to 77 ms next to a busy QEMG process; under SCHED_IDLE it was 40 ms).
_CHILD = """\
import os, sys
try:
    os.nice(int(sys.argv[3]))
except (OSError, AttributeError):
    pass
if sys.argv[4] == "idle" and hasattr(os, "SCHED_IDLE"):
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        pass
from streamemg.qemg.service import main
raise SystemExit(main(sys.argv[1:]))
"""


def main(argv: list[str] | None = None) -> int:
    """The QEMG process: ``WORK_FD RESULTS_FD NICE idle|normal [PAUSE_FD]`` (the pipe ends and the shared pause
    byte's file it inherited)."""
    args = sys.argv[1:] if argv is None else argv
    work = Connection(int(args[0]), writable=False)
    results = Connection(int(args[1]), readable=False)
    paused = mmap.mmap(int(args[4]), 1) if len(args) > 4 else None
    _serve(work, results, paused)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
