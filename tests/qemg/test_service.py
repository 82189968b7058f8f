"""Live streams' QEMG in the QEMG process: the same result as inline analysis, drops when it is behind, and
classification going on when it dies. A real child process throughout."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest

from simulators.synth import EMGSimulator
from streamemg.bench.common import qemg_processes_cpu_s, qemg_processes_rss_mb
from streamemg.model import load_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.qemg import QemgAnalyser, QemgSettings, QemgSummary
from streamemg.qemg import service as svc
from streamemg.qemg.service import MAX_QUEUED_BLOCKS, RemoteQemg
from streamemg.sinks.memory import MemorySink
from streamemg.sources.sim import SimSource

FS = 10000.0


def _units(summ: QemgSummary) -> list[tuple[float, int, str]]:
    return sorted((round(u.waveform.amplitude_uv, 3), u.discharges, u.kind) for u in summ.units)


@pytest.mark.timeout(120)
def test_remote_analysis_equals_inline_analysis_block_for_block() -> None:
    x = EMGSimulator("als", FS, seed=4).generate(round(9.3 * FS)).reshape(-1, 1)
    inline = QemgAnalyser(FS, 1, phase=0.37)
    remote = RemoteQemg(FS, 1, phase=0.37)
    published = []
    for i in range(0, x.shape[0], 2500):
        inline.process(x[i : i + 2500])
        remote.process(x[i : i + 2500])
        assert remote.wait_idle(30.0)  # a live stream's pace: the QEMG process keeps up
        published.append((inline.summary_dict(), remote.summary_dict()))
    assert remote.dropped_blocks == 0 and remote.sent_blocks >= 4
    assert all(a == b for a, b in published)  # the same measurement published at the same moments
    assert published[-1][1]["units"] >= 1
    # units and templates come over once asked for (the stream view): the latest published measurement, whole
    assert remote.summary().units == () or _units(remote.summary()) == _units(inline.summary())
    for _ in range(200):
        if remote.summary().units:
            break
        time.sleep(0.01)
    assert _units(remote.summary()) == _units(inline.summary()) and remote.summary().units
    a, b = inline.summary(fresh=True), remote.summary(fresh=True)  # the block in progress included on both sides
    assert remote.samples_seen == inline.samples_seen == x.shape[0]
    assert _units(a) == _units(b) and len(a.units) >= 1
    assert a.to_dict() == b.to_dict()
    remote.close()


@pytest.mark.timeout(120)
def test_a_stalled_qemg_process_drops_blocks_and_resumes() -> None:
    remote = RemoteQemg(FS, 1, QemgSettings(block_s=0.5))
    x = EMGSimulator("normal", FS, seed=1).generate(round(12 * FS)).reshape(-1, 1)
    remote.process(x[: round(FS)])
    assert remote.wait_idle(30.0)
    pid = svc.service(remote.settings.nice, remote.slot).proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        remote.process(x[round(FS) : round(7 * FS)])  # 12 blocks while the process sleeps
        assert remote.in_flight == MAX_QUEUED_BLOCKS
        assert remote.dropped_blocks == 12 - MAX_QUEUED_BLOCKS
    finally:
        os.kill(pid, signal.SIGCONT)
    assert remote.wait_idle(30.0)
    seen = remote.samples_seen
    for i in range(round(7 * FS), x.shape[0], round(0.5 * FS)):  # a live stream's pace again
        remote.process(x[i : i + round(0.5 * FS)])
        assert remote.wait_idle(30.0)
    assert remote.dropped_blocks == 12 - MAX_QUEUED_BLOCKS  # caught up: nothing more dropped
    assert remote.samples_seen == seen + round(5 * FS)  # and analysing again
    remote.close()


@pytest.mark.timeout(120)
async def test_streams_go_on_when_the_qemg_process_dies_and_qemg_comes_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(svc, "RESTART_S", 0.5)
    sink = MemorySink()
    src = SimSource("als", fs=FS, seed=2, speed=1.0, duration=9.0, name="patient-2")  # live: QEMG in the process
    pipe = Pipeline([src], [sink], bundle=load_bundle(None), settings=PipelineSettings(qemg=QemgSettings(block_s=0.5)))
    killed: dict[str, int] = {}

    async def kill_soon() -> None:
        for _ in range(400):  # at most 20 s: kill once the first estimate is out
            if sink.estimates:
                break
            await asyncio.sleep(0.05)
        for st in pipe.streams.values():
            assert isinstance(st.qemg, RemoteQemg)
            proc = svc.service(st.qemg.settings.nice, st.qemg.slot).proc
            killed["pid"], killed["analysed"] = proc.pid, st.qemg.analysed_blocks
            proc.kill()

    with caplog.at_level(logging.ERROR, logger="streamemg.qemg.service"):
        await asyncio.gather(pipe.run(), kill_soon())
    # every window was still classified; the QEMG loss was said
    assert len(sink.estimates) >= 25
    assert any("QEMG process" in r.getMessage() for r in caplog.records)
    # and the stream's analysis went on in a new process
    (st,) = pipe.streams.values()
    assert isinstance(st.qemg, RemoteQemg)
    assert st.qemg._service.proc.pid != killed["pid"] and st.qemg._service.alive
    assert st.qemg.analysed_blocks > killed["analysed"] + 4


@pytest.mark.timeout(120)
def test_streams_are_dealt_to_several_qemg_processes() -> None:
    settings = QemgSettings(processes=2, block_s=0.5)
    a, b = RemoteQemg(FS, 1, settings), RemoteQemg(FS, 1, settings)
    assert {a.slot, b.slot} == {0, 1}
    pids = {svc.service(settings.nice, q.slot).proc.pid for q in (a, b)}
    assert len(pids) == 2
    x = EMGSimulator("normal", FS, seed=3).generate(round(2 * FS)).reshape(-1, 1)
    for q in (a, b):
        q.process(x)
        assert q.wait_idle(30.0) and q.samples_seen == round(2 * FS)
    assert qemg_processes_cpu_s() > 0 and qemg_processes_rss_mb() > 10
    a.close()
    b.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
@pytest.mark.timeout(60)
def test_the_qemg_process_runs_at_the_lowest_priority() -> None:
    q = RemoteQemg(FS, 1)
    pid = svc.service(q.settings.nice, q.slot).proc.pid
    assert q.wait_idle(30.0)
    q.process(EMGSimulator("normal", FS, seed=0).generate(round(2.5 * FS)).reshape(-1, 1))
    assert q.wait_idle(30.0) and q.samples_seen > 0  # it has been running its analysis
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + q.settings.nice)
    q.close()


@pytest.mark.timeout(120)
def test_samples_waiting_for_a_stalled_qemg_process_are_bounded_and_new_streams_never_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(svc, "MAX_QUEUED_BYTES", 1_000_000)
    settings = QemgSettings(block_s=0.5, processes=1)  # every stream in the one process stopped below
    first = RemoteQemg(FS, 1, settings)
    service = svc.service(settings.nice, first.slot)
    assert first.wait_idle(30.0)
    x = EMGSimulator("normal", FS, seed=5).generate(round(2 * FS)).reshape(-1, 1)  # 4 blocks of 40 kB each
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        streams = [first] + [RemoteQemg(FS, 1, settings) for _ in range(19)]
        for q in streams:
            q.process(x)
        assert service.queued_bytes <= 1_000_000
        assert sum(q.dropped_blocks for q in streams) > 0  # the bound dropped blocks, counted per stream
        t0 = time.monotonic()
        late = RemoteQemg(FS, 1, settings)  # a stream appearing now is registered without waiting
        assert time.monotonic() - t0 < 1.0
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    for q in [*streams, late]:
        assert q.wait_idle(30.0)
    assert service.queued_bytes == 0
    assert sum(q.analysed_blocks for q in streams) == sum(q.sent_blocks for q in streams) > 0
    for q in [*streams, late]:
        q.close()


@pytest.mark.timeout(60)
def test_a_closed_qemg_service_lets_its_process_finish_and_exit_cleanly() -> None:
    q = RemoteQemg(FS, 1, QemgSettings(processes=1, block_s=0.5))
    q.process(EMGSimulator("als", FS, seed=1).generate(round(FS)).reshape(-1, 1))
    assert q.wait_idle(30.0)
    service = svc.service(q.settings.nice, q.slot)
    service.close(timeout=10.0)
    assert service.proc.returncode == 0  # it saw the end of its pipe and exited, not killed after the timeout
    again = RemoteQemg(FS, 1, QemgSettings(processes=1, block_s=0.5))  # the next stream gets a new process
    again.process(EMGSimulator("als", FS, seed=1).generate(round(FS)).reshape(-1, 1))
    assert again.wait_idle(30.0) and again.samples_seen > 0
    again.close()


@pytest.mark.timeout(60)
def test_closing_a_stuck_qemg_process_ends_its_sender_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child does not read (stopped) while the sender is blocked writing more than the pipe holds: close() kills
    the child after its timeout, and the sender, whose write then fails, has ended, without an error, by the time
    close() returns (its pipe is closed only then: closed under a send, the thread died with a TypeError)."""
    import threading

    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    q = RemoteQemg(FS, 1, QemgSettings(processes=1, block_s=0.5))
    service = svc.service(q.settings.nice, q.slot)
    assert q.wait_idle(30.0)
    os.kill(service.proc.pid, signal.SIGSTOP)
    block = EMGSimulator("als", FS, seed=1).generate(round(0.5 * FS)).reshape(-1, 1)  # 40 kB
    for _ in range(8):  # 320 kB: more than a pipe holds, so the sender blocks in a write
        assert service.put_block(q._id, block, force=True)
    deadline = time.monotonic() + 10.0
    while service.queued_bytes > 6 * block.nbytes and time.monotonic() < deadline:  # the sender took some
        time.sleep(0.01)
    service.close(timeout=0.5)
    assert service.proc.returncode == -signal.SIGKILL  # it was stuck: killed after the timeout
    assert not service._sender.is_alive()
    assert crashed == []
    q.close()


@pytest.mark.timeout(120)
async def test_a_finished_run_lets_the_qemg_process_finish_then_frees_its_streams() -> None:
    sink = MemorySink()
    src = SimSource("normal", fs=FS, seed=3, speed=1.0, duration=3.0, name="bed")  # live: QEMG in the process
    pipe = Pipeline([src], [sink], bundle=load_bundle(None), settings=PipelineSettings(qemg=QemgSettings(block_s=0.5)))
    await pipe.run()
    (st,) = pipe.streams.values()
    q = st.qemg
    assert isinstance(q, RemoteQemg)
    assert q.sent_blocks >= 4 and q.analysed_blocks == q.sent_blocks  # everything sent was analysed
    assert q._id not in q._service._clients  # and the stream's state was freed
    assert sink.estimates[-1].qemg is not None


def test_the_yield_gate_follows_the_event_loops_load() -> None:
    """Yielding from the start until a period shows room; above the load it yields, and resumes only 0.1 under it."""
    gate = svc.YieldGate(0.6)
    t, cpu = 0.0, 0.0
    assert gate.tick(t, cpu) is True  # nothing measured yet: QEMG waits

    def period(share: float) -> bool:
        nonlocal t, cpu
        t, cpu = t + 0.25, cpu + 0.25 * share
        return gate.tick(t, cpu)

    assert period(0.3) is False  # room: 0.15 smoothed
    assert period(0.9) is False  # 0.525: not over 0.6 yet
    assert period(0.9) is True  # 0.71
    assert period(0.45) is True  # 0.58: under 0.6 but not under 0.5
    assert period(0.3) is False  # 0.44
    assert period(0.7) is False  # 0.57: under the load itself


@pytest.mark.timeout(120)
def test_yielding_drops_new_blocks_and_a_paused_process_skips_what_it_holds() -> None:
    """set_yielding() stops the blocks at the pipeline's side; the QEMG process, which reads the shared pause byte
    before each block, skips what it was sent while it is set (answered as skipped, not analysed) and analyses
    again once it is cleared."""
    x = EMGSimulator("normal", FS, seed=2).generate(round(8 * FS)).reshape(-1, 1)
    remote = RemoteQemg(FS, 1)
    try:
        svc.set_yielding(True)
        assert remote._service.paused[0] == 1
        remote.process(x[: round(4 * FS)])
        assert remote.sent_blocks == 0 and remote.dropped_blocks >= 1  # nothing left this process
    finally:
        svc.set_yielding(False)
    assert remote._service.paused[0] == 0
    remote._service.paused[0] = 1  # the process alone paused: what reaches it is skipped
    remote.process(x[round(4 * FS) : round(6 * FS)])
    assert remote.sent_blocks >= 1 and remote.wait_idle(30.0)
    assert remote.skipped_blocks == remote.sent_blocks and remote.analysed_blocks == 0
    remote._service.paused[0] = 0
    remote.process(x[round(6 * FS) :])
    assert remote.wait_idle(30.0)
    assert remote.analysed_blocks >= 1 and remote.skipped_blocks < remote.sent_blocks
    remote.close()


def test_the_pause_is_shown_only_where_live_streams_are_analysed() -> None:
    """The gate starts yielding, but a pipeline with no live stream (files are analysed inline, whatever the load)
    has no QEMG to pause: its dashboard must not say it is paused."""
    pipe = Pipeline([], [], bundle=load_bundle(None))
    assert pipe.qemg_gate is not None and pipe.qemg_gate.on
    svc.set_yielding(True)  # as the watchdog does while a file replay keeps the loop busy
    try:
        assert pipe.snapshot().qemg_yielding is False
    finally:
        svc.set_yielding(False)
