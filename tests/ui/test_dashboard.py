"""Dashboard: pure render functions (asserting on the text a person reads) and the Live driver."""

from __future__ import annotations

import asyncio
import io
import math
import re
import statistics
import time

import pytest
from rich.console import Console

from streamemg.clock import ManualClock
from streamemg.errors import ConfigError
from streamemg.types import CLASS_NAMES, Estimate, StreamStatus
from streamemg.ui.dashboard import (
    Dashboard,
    DashboardRenderer,
    page_count,
    prob_bar,
    render,
    render_header,
    rows_per_page,
    sort_streams,
    sparkline,
)
from streamemg.ui.snapshot import PipelineSnapshot, StreamSnapshot


# ----------------------------------------------------------------------------------------------- fixtures
def make_stream(
    name: str,
    *,
    status: StreamStatus = StreamStatus.LIVE,
    detail: str = "",
    label: str | None = "ALS",
    confidence: float = 0.87,
    rolling: tuple[float, float, float] = (0.08, 0.87, 0.05),
    window: tuple[float, float, float] = (0.1, 0.8, 0.1),
    quality: str = "ok",
    trained: bool = True,
    estimate: bool = True,
    p50: float = 12.3,
    p99: float = 45.6,
    level: tuple[float, ...] = (10.0, 100.0, 1000.0),
    seq: int = 0,
) -> StreamSnapshot:
    """One stream snapshot with sensible, overridable values."""
    est = None
    if estimate:
        est = Estimate(
            stream_id=f"id:{name}",
            name=name,
            index=seq,
            time=float(seq),
            probabilities=window,
            rolling=rolling,
            cumulative=rolling,
            label=label if (trained and quality == "ok") else None,
            confidence=confidence if (trained and quality == "ok") else 0.0,
            quality=quality,
            latency_ms=p50,
            trained=trained,
        )
    return StreamSnapshot(
        stream_id=f"id:{name}",
        name=name,
        source=f"sim:{name}",
        fs=10000.0,
        n_channels=2,
        status=status,
        status_detail=detail,
        level=level,
        last=est,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        windows_per_s=4.0,
        windows=40 + seq,
        dropped_samples=120,
        dropped_windows=3,
    )


def make_snapshot(
    streams: tuple[StreamSnapshot, ...],
    *,
    trained: bool = True,
    errors: tuple[str, ...] = (),
    sink_drops: dict[str, int] | None = None,
) -> PipelineSnapshot:
    return PipelineSnapshot(
        device="cpu",
        model_name="spectroemg-test",
        trained=trained,
        uptime_s=65.0,
        streams=streams,
        batch_mean=12.5,
        batch_max=40,
        max_batch=64,
        windows_total=sum(s.windows for s in streams),
        windows_per_s=4.0 * len(streams),
        dropped_windows=3 * len(streams),
        sink_drops={"jsonl:out.jsonl": 0} if sink_drops is None else sink_drops,
        errors=errors,
    )


def many_streams(n: int, *, trained: bool = True, seq: int = 0) -> tuple[StreamSnapshot, ...]:
    """n streams cycling through the classes; every 16th a problem (reconnecting, stale, clipping)."""
    out = []
    for i in range(n):
        cls = CLASS_NAMES[i % 3]
        roll = [0.1, 0.1, 0.1]
        roll[i % 3] = 0.8
        status, detail, quality = StreamStatus.LIVE, "", "ok"
        if i % 16 == 7:
            status, detail = StreamStatus.RECONNECTING, "outlet lost, retrying"
        elif i % 16 == 5:
            status, detail = StreamStatus.STALE, "no data for 3 s"
        elif i % 16 == 3:
            quality = "clipping"
        out.append(
            make_stream(
                f"s{i + 1}",
                status=status,
                detail=detail,
                label=cls,
                confidence=0.8,
                rolling=(roll[0], roll[1], roll[2]),
                quality=quality,
                trained=trained,
                p50=5.0 + (i + seq) % 7,
                p99=20.0 + (i * 3 + seq) % 11,
                level=tuple(float(10 + (i + k + seq) % 900) for k in range(24)),
                seq=seq,
            )
        )
    return tuple(out)


def text_of(renderable: object, width: int = 160, height: int | None = None) -> str:
    console = Console(record=True, width=width, height=height or 25, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def table_rows(text: str) -> list[str]:
    """The stream rows of a rendered dashboard (lines between the column header and the footer)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("Stream"))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith(("outputs", "✗", "Ctrl-C")):
            break
        rows.append(line)
    return rows


# ----------------------------------------------------------------------------------------------- glyphs
def test_sparkline_uses_fixed_log_scale_and_marks_gaps() -> None:
    assert sparkline((1.0, 2000.0, 0.0, math.nan), 4) == "▁█ ×"
    assert sparkline((1.0, 2000.0), 5) == "   ▁█"  # short history is right-aligned
    assert sparkline(tuple(float(x) for x in range(1, 50)), 3) == sparkline((47.0, 48.0, 49.0), 3)
    # 10x more signal is visibly higher
    low, high = sparkline((10.0,), 1), sparkline((1000.0,), 1)
    assert "▁▂▃▄▅▆▇█".index(low) < "▁▂▃▄▅▆▇█".index(high)


def test_prob_bar_has_fixed_width_and_eighth_resolution() -> None:
    assert prob_bar(0.0, 4) == "    "
    assert prob_bar(1.0, 4) == "████"
    assert prob_bar(0.5, 4) == "██  "
    assert prob_bar(1 / 32, 4) == "▏   "
    assert prob_bar(math.nan, 3) == "   "
    assert prob_bar(7.0, 2) == "██"


# ----------------------------------------------------------------------------------------------- the view
def test_render_shows_header_rows_and_footer() -> None:
    snap = make_snapshot(
        (
            make_stream("patient-als"),
            make_stream("patient-normal", label="Normal", confidence=0.91, rolling=(0.91, 0.05, 0.04)),
        ),
        sink_drops={"jsonl:out.jsonl": 0, "mqtt://127.0.0.1:1883": 17},
    )
    text = text_of(render(snap, width=160, height=40))
    # header
    assert "device cpu" in text
    assert "model spectroemg-test ✓ trained" in text
    assert "mean 12.5 · max 40 of 64" in text
    assert "uptime 0:01:05" in text
    assert "streams 2" in text and "8.0 windows/s" in text
    assert "dropped 6 windows · 240 samples" in text
    assert "labels 1 Normal · 1 ALS · 0 Myopathy" in text
    # column headers, including one per class
    header = next(line for line in text.splitlines() if line.lstrip().startswith("Stream"))
    for col in ("Stream", "Source", "Status", "Level", "Win", *CLASS_NAMES, "Label", "p50/p99 ms", "win/s"):
        assert col in header
    # rows
    rows = table_rows(text)
    assert len(rows) == 2
    als = next(r for r in rows if "patient-als" in r)
    assert "sim:patient" in als and "10k" in als and "● live" in als
    assert "ALS 87%" in als and " 87%" in als and "12.3/45.6" in als and "4.0" in als and "120/3" in als
    assert "Normal 91%" in next(r for r in rows if "patient-normal" in r)
    # footer
    assert "mqtt://127.0.0.1:1883 17 dropped" in text
    assert "Ctrl-C to stop" in text


def test_untrained_model_never_reads_as_a_diagnosis() -> None:
    streams = (make_stream("p1", trained=False), make_stream("p2", trained=False, quality="clipping"))
    text = text_of(render(make_snapshot(streams, trained=False), width=160, height=40))
    assert "UNTRAINED MODEL" in text and "not a diagnosis" in text
    assert "UNTRAINED" in next(line for line in text.splitlines() if "model spectroemg-test" in line)
    assert "2 untrained" in text and "0 ALS" not in text
    rows = table_rows(text)
    assert len(rows) == 2
    for row in rows:
        label = row[row.index("untrained") :]
        assert not any(c in label for c in CLASS_NAMES), f"a class is named in the label column: {row!r}"
    assert "untrained (clipping)" in text


def test_untrained_estimate_under_a_trained_flag_still_says_untrained() -> None:
    text = text_of(render(make_snapshot((make_stream("p1", trained=False),), trained=True), width=160, height=30))
    assert "untrained" in table_rows(text)[0]


def test_withheld_label_says_why() -> None:
    snap = make_snapshot(
        (make_stream("bad-electrode", quality="clipping"), make_stream("quiet", quality="low_activity"))
    )
    text = text_of(render(snap, width=160, height=30))
    assert "withheld: clipping" in text
    assert "withheld: low activity" in text
    assert "2 withheld" in text


def test_status_text_detail_and_colour() -> None:
    snap = make_snapshot(
        (
            make_stream("amp-1", status=StreamStatus.RECONNECTING, detail="outlet lost, retrying"),
            make_stream("amp-2", status=StreamStatus.STALE, detail="no data for 3 s"),
            make_stream("amp-3", status=StreamStatus.ENDED),
            make_stream("amp-4", estimate=False, status=StreamStatus.CONNECTING),
        )
    )
    view = render(snap, width=160, height=30)
    text = text_of(view)
    assert "↻ reconnecting: outlet" in text  # the detail is cut to the column (with an ellipsis)
    assert "◐ stale: no data for 3 s" in text
    wide = text_of(render(snap, width=220, height=30), width=220)
    assert "↻ reconnecting: outlet lost, retrying" in wide
    assert "■ ended" in text and "◌ connecting" in text and "waiting…" in text
    assert "1 connecting · 1 stale · 1 reconnecting · 1 ended" in text
    console = Console(width=160, height=30, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    segments = list(console.render(view, console.options))
    colours = {seg.text.strip(): seg.style.color.name for seg in segments if seg.style and seg.style.color}
    assert any("reconnecting" in t and c == "red" for t, c in colours.items())
    assert any("stale" in t and c == "yellow" for t, c in colours.items())


def test_latency_over_budget_is_highlighted() -> None:
    snap = make_snapshot((make_stream("slow", p50=40.0, p99=300.0), make_stream("fast", p50=3.0, p99=9.0)))
    console = Console(width=160, height=30, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    segments = list(console.render(render(snap, width=160, height=30), console.options))
    slow = next(s for s in segments if "40.0/300.0" in s.text)
    fast = next(s for s in segments if "3.0/9.0" in s.text)
    assert slow.style is not None and slow.style.color is not None and slow.style.color.name == "red"
    assert fast.style is None or fast.style.color is None


def test_problems_sort_first_then_natural_name_order() -> None:
    streams = [make_stream(f"s{i}") for i in range(1, 12)]
    streams[6] = make_stream("s7", status=StreamStatus.RECONNECTING)
    streams[2] = make_stream("s3", status=StreamStatus.STALE)
    streams[8] = make_stream("s9", quality="clipping")
    streams[1] = make_stream("s2", status=StreamStatus.ENDED)
    expected = ["s7", "s3", "s9", "s1", "s4", "s5", "s6", "s8", "s10", "s11", "s2"]
    assert [s.name for s in sort_streams(reversed(streams))] == expected
    rows = table_rows(text_of(render(make_snapshot(tuple(streams)), width=160, height=60)))
    assert [r.split()[0] for r in rows] == expected


def test_256_streams_are_paged_to_the_terminal_height_with_a_summary() -> None:
    snap = make_snapshot(many_streams(256))
    per_page = rows_per_page(snap, 50)
    assert per_page is not None and 30 <= per_page < 50
    n_pages = page_count(256, per_page)
    assert n_pages == math.ceil(256 / per_page)
    seen: set[str] = set()
    for page in range(n_pages):
        text = text_of(render(snap, width=160, height=50, page=page), height=50)
        assert len(text.splitlines()) <= 50
        assert f"page {page + 1}/{n_pages}" in text
        rows = table_rows(text)
        assert len(rows) == (per_page if page < n_pages - 1 else 256 - per_page * (n_pages - 1))
        seen.update(r.split()[0] for r in rows)
        if page == 0:  # the problems are on the first page
            assert "16 stale · 16 reconnecting" in text
            assert "reconnecting" in rows[0] and "withheld: clipping" in text
    assert seen == {f"s{i}" for i in range(1, 257)}
    # the page index wraps around (the driver just keeps counting)
    assert (
        table_rows(text_of(render(snap, width=160, height=50, page=n_pages), height=50))[0]
        == table_rows(text_of(render(snap, width=160, height=50, page=0), height=50))[0]
    )
    # summary counts per status and per label
    text = text_of(render(snap, width=160, height=50), height=50)
    assert "streams 256" in text
    assert "status 224 live · 16 stale · 16 reconnecting" in text
    counts = {c: sum(1 for s in snap.streams if s.last and s.last.label == c) for c in CLASS_NAMES}
    assert f"labels {counts['Normal']} Normal · {counts['ALS']} ALS · {counts['Myopathy']} Myopathy · 16 withheld" in (
        text
    )


def test_without_a_height_every_stream_is_shown() -> None:
    snap = make_snapshot(many_streams(40))
    text = text_of(render(snap, width=160))
    assert len(table_rows(text)) == 40
    assert "all 40 streams" in text


def test_narrow_terminal_drops_columns_but_keeps_what_matters() -> None:
    snap = make_snapshot(many_streams(5), errors=("x" * 300,))
    for width in (60, 80, 100, 120, 200):
        text = text_of(render(snap, width=width, height=30), width=width)
        assert all(len(line) <= width for line in text.splitlines()), width
        rows = table_rows(text)
        assert len(rows) == 5
        assert any("s1" in r for r in rows)
        header = next(line for line in text.splitlines() if line.lstrip().startswith("Stream"))
        assert sum(c in header for c in CLASS_NAMES) in (0, 3), header  # the class columns come and go together
        if width >= 80:
            assert any("ALS 80%" in r for r in rows)
            header = next(line for line in text.splitlines() if line.lstrip().startswith("Stream"))
            assert all(c in header for c in CLASS_NAMES)


def test_footer_shows_recent_errors_newest_last() -> None:
    errors = tuple(f"error number {i}\nwith a traceback line" for i in range(5))
    text = text_of(render(make_snapshot(many_streams(3), errors=errors), width=160, height=40))
    assert "✗ error number 2 (+2 earlier)" in text
    assert "✗ error number 4" in text
    assert "error number 1" not in text and "traceback" not in text
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if "error number 4" in x)) > lines.index(
        next(x for x in lines if "error number 3" in x)
    )


def test_render_takes_the_console_size_when_none_is_given() -> None:
    snap = make_snapshot(many_streams(100))
    text = text_of(render(snap), width=100, height=30)
    assert all(len(line) <= 100 for line in text.splitlines())
    assert len(table_rows(text)) == 100  # a plain console has no height: no paging
    console = Console(record=True, width=100, height=30, file=io.StringIO())
    console.print(render(snap), height=30)
    paged = console.export_text()
    assert "page 1/" in paged and len(paged.splitlines()) <= 30


def test_header_alone_for_a_final_summary() -> None:
    text = text_of(render_header(make_snapshot(many_streams(10))), width=120)
    assert "streams 10" in text and "labels" in text and "Stream" not in text


def test_row_cache_gives_the_same_picture() -> None:
    renderer = DashboardRenderer(row_cache_size=8)
    snap = make_snapshot(many_streams(20))
    first = text_of(renderer.render(snap, width=160, height=60))
    second = text_of(renderer.render(snap, width=160, height=60))  # rows now come from the cache
    assert first == second
    changed = make_snapshot(many_streams(20, seq=1))
    assert text_of(renderer.render(changed, width=160, height=60)) == text_of(render(changed, width=160, height=60))


def test_render_cost_at_256_streams_is_small() -> None:
    """CPU time of one frame (render + rich's layout into terminal output) at 160x50 with 256 streams.

    Every frame uses a fresh snapshot (new objects, changed values), so the row cache cannot help.
    The budget is 5 % of one core at 4 Hz (12.5 ms a frame); the measured cost is printed.
    """
    renderer = DashboardRenderer()
    snaps = [make_snapshot(many_streams(256, seq=k)) for k in range(12)]
    console = Console(width=160, height=50, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    costs = []
    for k, snap in enumerate(snaps):
        t0 = time.thread_time()
        console.print(renderer.render(snap, width=160, height=50, page=k))
        console.file = io.StringIO()
        costs.append(time.thread_time() - t0)
    per_frame = statistics.median(costs[2:])
    print(f"\nrender cost, 256 streams at 160x50: {per_frame * 1e3:.2f} ms CPU per frame = {per_frame * 4:.2%} at 4 Hz")
    assert per_frame * 4.0 < 0.05


# ----------------------------------------------------------------------------------------------- the driver
def terminal_console(width: int = 120, height: int = 40) -> tuple[Console, io.StringIO]:
    """A console that believes it is a terminal, writing into the returned buffer."""
    out = io.StringIO()
    return Console(width=width, height=height, file=out, force_terminal=True, color_system="truecolor"), out


async def test_dashboard_refreshes_at_its_rate_and_exits_cleanly() -> None:
    snap = make_snapshot(many_streams(3))
    calls = 0
    enough = asyncio.Event()

    def snapshot_fn() -> PipelineSnapshot:
        nonlocal calls
        calls += 1
        if calls >= 10:
            enough.set()
        return snap

    console, out = terminal_console()
    dash = Dashboard(snapshot_fn, refresh_hz=50.0, console=console)
    assert dash.screen  # a terminal: alternate screen
    t0 = time.perf_counter()
    async with dash:
        assert dash.running
        await asyncio.wait_for(enough.wait(), timeout=10.0)
        elapsed = time.perf_counter() - t0
        frames = dash.refreshes
    assert frames >= 10
    assert frames <= elapsed * 50.0 + 2  # absolute deadlines: never faster than the rate
    assert not dash.running
    assert dash.cpu_seconds > 0 and dash.last_cpu_s > 0
    assert 0.0 < dash.cost_fraction < 1.0
    written = out.getvalue()
    assert "\x1b[?1049h" in written and "\x1b[?1049l" in written  # entered and left the alternate screen
    assert "s1" in written and "Ctrl-C" in written
    assert "dashboard" in written and "CPU" in written  # its own cost is shown
    await dash.aclose()  # idempotent
    await dash.__aexit__(None, None, None)


async def test_a_failing_snapshot_fn_is_not_swallowed_and_the_terminal_is_restored() -> None:
    snap = make_snapshot(many_streams(2))
    calls = 0

    def snapshot_fn() -> PipelineSnapshot:
        nonlocal calls
        calls += 1
        if calls >= 3:
            raise RuntimeError("snapshot broke")
        return snap

    console, out = terminal_console()
    dash = Dashboard(snapshot_fn, refresh_hz=50.0, console=console, final_summary=False)
    with pytest.raises(RuntimeError, match="snapshot broke"):
        async with dash:
            with pytest.raises(RuntimeError, match="snapshot broke"):
                await asyncio.wait_for(dash.wait(), timeout=10.0)
            assert not dash.running
            assert "\x1b[?1049l" in out.getvalue()
    assert dash.refreshes == 2


async def test_a_failing_first_frame_fails_on_entry() -> None:
    def boom() -> PipelineSnapshot:
        raise RuntimeError("no snapshot")

    console, out = terminal_console()
    with pytest.raises(RuntimeError, match="no snapshot"):
        async with Dashboard(boom, console=console):
            pass  # pragma: no cover
    assert "\x1b[?1049l" in out.getvalue()


async def test_pages_rotate_with_the_clock_and_cost_is_cpu_over_wall_time() -> None:
    snap = make_snapshot(many_streams(256))
    clock = ManualClock(100.0)
    cpu = [0.0]

    def cpu_clock() -> float:  # every refresh costs exactly 1 ms of "CPU"
        cpu[0] += 0.001
        return cpu[0]

    console, _ = terminal_console(160, 50)
    dash = Dashboard(lambda: snap, refresh_hz=1.0, console=console, clock=clock, page_s=5.0, cpu_clock=cpu_clock)
    async with dash:  # draws frame 1 at once; the task sleeps a real second, the test does not await
        assert dash.page_index() == 0
        clock.advance(5.0)
        assert dash.page_index() == 1
        console.file = fresh = io.StringIO()
        dash.refresh()
        assert "page 2/" in fresh.getvalue()
        assert dash.refreshes == 2
        assert dash.cpu_seconds == pytest.approx(0.002)
        assert dash.cost_fraction == pytest.approx(0.002 / 5.0)
        clock.advance(20.0)  # old frames leave the 10 s cost window
        assert dash.cost_fraction == 0.0


async def test_non_terminal_console_prints_the_final_frame() -> None:
    snap = make_snapshot(many_streams(3))
    out = io.StringIO()
    console = Console(width=160, file=out)
    assert not console.is_terminal
    async with Dashboard(lambda: snap, refresh_hz=20.0, console=console) as dash:
        assert not dash.screen
    text = out.getvalue()
    assert "s1" in text and "\x1b[?1049h" not in text
    assert len(table_rows(text)) == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"refresh_hz": 0.0}, "refresh_hz"), ({"refresh_hz": math.inf}, "refresh_hz"), ({"page_s": -1.0}, "page_s")],
)
def test_bad_settings_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        Dashboard(lambda: make_snapshot(()), console=terminal_console()[0], **kwargs)  # type: ignore[arg-type]


def test_empty_pipeline_renders() -> None:
    text = text_of(render(make_snapshot((), sink_drops={}), width=100, height=20), width=100)
    assert "streams 0" in text and "no streams yet" in text and "outputs none" in text and "all 0 streams" in text
