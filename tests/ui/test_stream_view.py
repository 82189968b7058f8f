"""Keys, navigation, terminal plots and the stream view: pure logic (the real-terminal tests are in
test_dashboard_tmux.py)."""

from __future__ import annotations

import asyncio
import io
import statistics
import time

import numpy as np
import pytest
import torch
from rich.cells import cell_len
from rich.console import Console

from streamemg.estimates import HistoryView
from streamemg.types import Estimate, StreamStatus
from streamemg.ui.dashboard import Dashboard
from streamemg.ui.keys import KeyReader, parse_keys
from streamemg.ui.navigation import Navigator
from streamemg.ui.plots import braille_lines, envelope_rows, heat_lines, nice_ceiling, series_rows
from streamemg.ui.snapshot import PipelineSnapshot, StreamDetail, StreamSnapshot
from streamemg.ui.streamview import compose_stream_view


# ----------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("\x1b[A\x1b[B\x1b[C\x1b[D", ["up", "down", "right", "left"]),
        ("\x1bOA\x1bOB", ["up", "down"]),  # application cursor mode
        ("\x1b[5~\x1b[6~", ["pageup", "pagedown"]),
        ("\x1b[H\x1b[F\x1b[1~\x1b[4~\x1bOH\x1bOF", ["home", "end", "home", "end", "home", "end"]),
        ("\r\n\x7f\x03", ["enter", "enter", "backspace", "ctrl-c"]),
        ("jk/q?é", ["j", "k", "/", "q", "?", "é"]),
        ("\x1b", ["escape"]),
        ("\x1b\x1b[A", ["escape", "up"]),
        ("\x1b[1;5A", ["up"]),  # Ctrl-Up: the plain key
        ("\x1b[99~x", ["unknown", "x"]),
    ],
)
def test_parse_keys(text: str, keys: list[str]) -> None:
    assert parse_keys(text) == (keys, "")


def test_an_unfinished_sequence_waits_for_the_next_read() -> None:
    keys, rest = parse_keys("j\x1b[5")
    assert keys == ["j"] and rest == "\x1b[5"
    assert parse_keys(rest + "~") == (["pageup"], "")


def test_key_reader_joins_split_reads_and_utf8() -> None:
    got: list[str] = []
    reader = KeyReader(got.append, stream=io.StringIO())  # not a terminal: never activates
    with reader:
        assert not reader.active
    reader.feed(b"\x1b[")
    reader.feed(b"6~\xc3")  # first byte of "é"
    reader.feed(b"\xa9\r")
    assert got == ["pagedown", "é", "enter"]


# ----------------------------------------------------------------------------------------------- navigation
ORDER = ["a", "b", "c", "d", "e"]


def test_navigator_moves_within_bounds_and_pages() -> None:
    nav = Navigator()
    nav.sync(ORDER)
    assert nav.selected == "a" and not nav.interacted
    nav.handle("k", ORDER, 2)
    assert nav.selected == "a" and nav.interacted  # clamped at the top
    for key, want in (("j", "b"), ("down", "c"), ("pagedown", "e"), ("pageup", "c"), ("home", "a"), ("G", "e")):
        nav.handle(key, ORDER, 2)
        assert nav.selected == want, key
    nav.handle("j", ORDER, 2)
    assert nav.selected == "e"  # clamped at the bottom


def test_navigator_opens_a_stream_and_goes_back() -> None:
    nav = Navigator(selected="c")
    nav.handle("enter", ORDER, 3)
    assert nav.screen == "stream"
    nav.handle("j", ORDER, 3)  # next stream inside the stream view
    assert nav.screen == "stream" and nav.selected == "d"
    nav.handle("q", ORDER, 3)  # q in a stream view goes back, it does not quit
    assert nav.screen == "table" and not nav.quit_requested
    nav.handle("q", ORDER, 3)
    assert nav.quit_requested


def test_navigator_filter_typing_and_help() -> None:
    nav = Navigator(selected="a")
    nav.handle("/", ORDER, 3)
    for key in ("x", "y", "backspace", "z"):
        nav.handle(key, ORDER, 3)
    assert nav.editing == "xz" and nav.active_filter == "xz"
    nav.handle("q", ORDER, 3)  # typed into the filter, not a quit
    assert nav.editing == "xzq" and not nav.quit_requested
    nav.handle("enter", ORDER, 3)
    assert nav.filter == "xzq" and nav.editing is None
    nav.handle("escape", ORDER, 3)
    assert nav.filter == ""
    nav.handle("?", ORDER, 3)
    assert nav.screen == "help"
    nav.handle("escape", ORDER, 3)
    assert nav.screen == "table"
    nav.handle("enter", [], 3)  # nothing to open
    assert nav.screen == "table"


# ----------------------------------------------------------------------------------------------- plots
def test_braille_lines_pack_dots() -> None:
    grid = np.zeros((8, 4), dtype=bool)
    grid[:4, :2] = True  # the whole first cell
    grid[4, 2] = True  # top-left dot of the second row's second cell
    assert braille_lines(grid) == ["⣿ ", " ⠁"]
    with pytest.raises(ValueError, match="4h, 2w"):
        braille_lines(np.zeros((5, 2), dtype=bool))


def test_envelope_rows_draw_min_to_max_per_column() -> None:
    y = np.array([0.0, 1.0, -1.0, 0.0])  # 4 samples into 2 columns: [0, 1] and [-1, 0]
    g = envelope_rows(y, n_cols=2, n_rows=5, limit=1.0)
    assert g[:, 0].tolist() == [True, True, True, False, False]  # 0..+1: rows 0-2
    assert g[:, 1].tolist() == [False, False, True, True, True]  # -1..0: rows 2-4
    short = envelope_rows(np.array([0.0]), n_cols=4, n_rows=3, limit=1.0)
    assert short[:, :3].sum() == 0 and short[1, 3]  # fewer samples than columns: drawn at the right edge


def test_series_rows_join_points_and_leave_gaps() -> None:
    g = series_rows(np.array([0.0, 1.0, np.nan, 0.5]), n_rows=3)
    assert g[:, 0].tolist() == [False, False, True]
    assert g[:, 1].tolist() == [True, True, True]  # joined from 0 up to 1
    assert not g[:, 2].any()
    assert g[:, 3].tolist() == [False, True, False]  # not joined across the gap


def test_nice_ceiling() -> None:
    assert [nice_ceiling(x) for x in (0.7, 1.0, 1.2, 3.0, 7.0, 420.0)] == [1.0, 1.0, 2.0, 5.0, 10.0, 500.0]
    assert nice_ceiling(float("nan")) == 1.0


def test_heat_lines_size_and_order() -> None:
    img = np.tile(np.arange(8, dtype=float)[:, None], (1, 5))  # rows 0 (bottom) .. 7 (top)
    lines = heat_lines(img, width=5, height=4, vmin=0.0, vmax=7.0)
    assert len(lines) == 4 and all(sum(len(t) for t, _ in line) == 5 for line in lines)
    top, bottom = lines[0][0][1], lines[-1][0][1]
    assert top.color is not None and bottom.color is not None
    brightness = [sum(c.color.get_truecolor()) for c in (top, bottom)]  # type: ignore[union-attr]
    assert brightness[0] > brightness[1]  # high values (top rows) are brighter


# ----------------------------------------------------------------------------------------------- stream view
def _history(n: int) -> tuple[Estimate, ...]:
    out = []
    for i in range(n):
        p = (0.1, 0.2 + 0.5 * i / n, 0.7 - 0.5 * i / n)
        q = "clipping" if i % 10 == 3 else "ok"
        label = None if q != "ok" else "ALS"
        out.append(Estimate("s", "patient-9", i, 0.25 * i, p, p, p, label, 0.5, q, 9.0, channel_quality=(q,)))
    return tuple(out)


def make_detail(n_channels: int = 1, with_trace: bool = True) -> StreamDetail:
    hist = _history(80)
    row = StreamSnapshot("s", "patient-9", "sim:als", 10000.0, n_channels, StreamStatus.LIVE, last=hist[-1],
                         windows=80, latency_p50_ms=9.0, latency_p99_ms=20.0)  # fmt: skip
    rng = np.random.default_rng(0)
    trace = (rng.standard_normal((6000 if with_trace else 0, n_channels)) * 80.0).astype(np.float32)
    return StreamDetail(
        stream=row,
        channels=tuple(f"ch{i + 1}" for i in range(n_channels)),
        units="uV",
        meta={},
        trace=trace,
        trace_fs=4000.0,
        window=trace[-4000:] if with_trace else None,
        history=HistoryView.from_estimates(hist),
        reconnects=2,
    )


def rendered(lines: object, width: int) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=True)
    for line in lines:  # type: ignore[attr-defined]
        console.print(line)
    return console.export_text()


@pytest.mark.parametrize(("width", "height", "channels"), [(160, 50, 1), (100, 30, 4), (80, 24, 16), (60, 14, 2)])
def test_stream_view_fits_the_terminal(width: int, height: int, channels: int) -> None:
    text = rendered(compose_stream_view(make_detail(channels), None, width=width, height=height), width)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height
    assert all(cell_len(line) <= width for line in lines)
    assert "patient-9" in lines[0] and "Esc" in lines[0]
    assert lines[-1].startswith("Esc back")  # the keys are on screen, whatever the size
    assert "µV" in text and any("\u2801" <= ch <= "\u28ff" for ch in text)
    assert "reconnects 2" in text or width < 120
    if channels == 16:
        assert "showing" in text and "of 16 channels" in text


def test_stream_view_shows_history_quality_and_waiting_states() -> None:
    text = rendered(compose_stream_view(make_detail(), None, width=160, height=50), 160)
    assert "estimate history" in text and "100%┤" in text and "0%┤" in text
    assert "clipping" in text  # the quality legend names the flag seen in the history
    assert "no model was given to the display" in text  # no inspection: the spectrogram says why
    empty = rendered(compose_stream_view(make_detail(with_trace=False), None, width=120, height=40), 120)
    assert "waiting for samples" in empty
    gone = rendered(compose_stream_view(None, None, width=120, height=40), 120)
    assert "no longer there" in gone


def test_untrained_model_in_the_stream_view_is_never_a_diagnosis() -> None:
    detail = make_detail()
    text = rendered(compose_stream_view(detail, None, width=160, height=50, trained=False), 160)
    assert "untrained" in text and "not a diagnosis" in text
    assert "estimate ALS" not in text


def test_stream_view_shows_qemg_when_present() -> None:
    detail = make_detail()
    import dataclasses

    assert detail.stream.last is not None
    qemg = {"units": 3, "amplitude_uv": 412.5, "duration_ms": 11.2, "phases": 3.1, "firing_hz": None}
    row = dataclasses.replace(detail.stream, last=dataclasses.replace(detail.stream.last, qemg=qemg))
    detail = dataclasses.replace(detail, stream=row)
    text = rendered(compose_stream_view(detail, None, width=160, height=50), 160)
    assert "QEMG" in text and "amplitude 412 µV" in text and "units 3" in text and "firing –" in text



def test_stream_view_says_which_templates_were_not_measured() -> None:
    """Each template's facts under its plot: amplitude and duration, or "not measured" for a potential that does not
    stand clear of its baseline (it has no duration; docs/qemg.md, Definitions)."""
    import dataclasses

    from streamemg.qemg import QemgSummary
    from streamemg.qemg.analyser import UnitMeasures
    from streamemg.qemg.measures import WaveformMeasures

    t = np.sin(np.linspace(0.0, 6.0, 400)) * 300.0
    clear = WaveformMeasures(600.0, 9.5, 3, 3, 900.0, 1.5, 150, 245, True)
    buried = WaveformMeasures(40.0, 0.0, 0, 0, 0.0, 0.0, 0, 0, False)
    units = tuple(
        UnitMeasures(0, w, 20, 10.0, 0.1, "muap", t * k, np.zeros(20)) for w, k in ((clear, 1.0), (buried, 0.1))
    )
    detail = dataclasses.replace(make_detail(), qemg=QemgSummary(units, 50.0, (3.0,), 1, 10.0))
    text = rendered(compose_stream_view(detail, None, width=160, height=50), 160)
    assert "600 µV 9.5 ms" in text and "not measured" in text and "40 µV 0.0 ms" not in text

def test_inspector_uses_the_models_own_modules() -> None:
    from streamemg.model import load_bundle
    from streamemg.ui.inspect import WindowInspector

    bundle = load_bundle(None)
    ins = WindowInspector(bundle)
    x = (np.random.default_rng(1).standard_normal(bundle.config.window_samples) * 100).astype(np.float32)
    view = ins.inspect(x)
    model = bundle.build("cpu")
    with torch.inference_mode():
        xt = torch.from_numpy(x)[None]
        want_spec = model.features(xt)[0, 0].numpy()
        want_p = torch.softmax(model(xt), dim=-1)[0].numpy()
    assert view.spectrogram.shape == want_spec.shape == (bundle.config.features.n_freqs, view.frame_s.size)
    np.testing.assert_allclose(view.spectrogram, want_spec, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(view.probabilities, want_p, rtol=1e-5, atol=1e-6)
    assert view.attention is not None and view.attention.sum() == pytest.approx(1.0)
    assert view.frequencies[0] >= bundle.config.features.fmin
    text = rendered(compose_stream_view(make_detail(), view, width=160, height=50), 160)
    assert "attention" in text and "▀" in text and "kHz" in text


def test_stream_view_render_cost() -> None:
    """CPU per stream-view frame at 160x50 on the event loop (compose + rich's output). The model's view of
    the window is computed on the dashboard's own one-torch-thread worker, once per new window: timed apart."""
    import concurrent.futures

    from streamemg.model import load_bundle
    from streamemg.ui.inspect import WindowInspector

    detail = make_detail()
    assert detail.window is not None
    window = detail.window[:, 0]
    console = Console(width=160, height=50, file=io.StringIO(), force_terminal=True, color_system="truecolor")

    def inspect_costs() -> tuple[object, float]:
        torch.set_num_threads(1)  # what the dashboard's inspection thread does (thread-local)
        ins = WindowInspector(load_bundle(None))
        costs = []
        for _ in range(8):
            t0 = time.thread_time()
            view = ins.inspect(window)
            costs.append(time.thread_time() - t0)
        return view, statistics.median(costs[2:])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        view, inspect_s = pool.submit(inspect_costs).result()
    costs = []
    for _ in range(8):
        t0 = time.thread_time()
        for line in compose_stream_view(detail, view, width=160, height=50):  # type: ignore[arg-type]
            console.print(line)
        console.file = io.StringIO()
        costs.append(time.thread_time() - t0)
    per_frame = statistics.median(costs[2:])
    print(
        f"\nstream view, 160x50: {per_frame * 1e3:.1f} ms CPU per frame on the loop = {per_frame * 4:.1%} of a core "
        f"at 4 Hz; model view of a window {inspect_s * 1e3:.1f} ms on its own thread"
    )
    assert per_frame * 4.0 < 0.5  # a guard against a pathological regression; the measured cost is printed
    assert inspect_s < 0.25


# ----------------------------------------------------------------------------------------------- the driver
async def test_driver_keys_switch_screens_and_q_quits() -> None:
    rows = tuple(
        StreamSnapshot(f"id{i}", f"patient-{i}", "sim", 10000.0, 1, StreamStatus.LIVE) for i in (1, 2, 3)
    )
    snap = PipelineSnapshot("cpu", "m", True, 1.0, rows)
    details: list[str] = []
    quits: list[bool] = []

    def detail_fn(stream_id: str) -> StreamDetail | None:
        details.append(stream_id)
        return make_detail()

    out = io.StringIO()
    console = Console(width=140, height=40, file=out, force_terminal=True)
    dash = Dashboard(lambda: snap, refresh_hz=2.0, console=console, detail_fn=detail_fn, keys=True,
                     on_quit=lambda: quits.append(True))  # fmt: skip
    async with dash:
        assert not dash.reading_keys  # stdin is not a terminal under pytest: keys come from on_key
        for key in ("/", "2", "enter"):
            dash.on_key(key)
        assert dash.nav.filter == "2" and dash.nav.selected == "id2"
        dash.on_key("enter")
        assert dash.nav.screen == "stream" and details[-1] == "id2"
        assert "estimate history" in out.getvalue()
        dash.on_key("escape")
        dash.on_key("escape")  # clears the filter
        dash.on_key("q")
        await asyncio.sleep(0)
    assert quits == [True]
    assert dash.nav.screen == "table" and dash.nav.filter == ""


async def test_the_model_view_is_computed_off_the_event_loop_and_shown() -> None:
    import threading

    from streamemg.model import load_bundle

    detail = make_detail(n_channels=2)
    snap = PipelineSnapshot("cpu", "m", True, 1.0, (detail.stream,))
    out = io.StringIO()
    console = Console(width=160, height=50, file=out, force_terminal=True)
    dash = Dashboard(lambda: snap, refresh_hz=20.0, console=console, detail_fn=lambda sid: detail,
                     bundle=load_bundle(None), keys=True)  # fmt: skip
    loop_thread = threading.get_ident()
    async with dash:
        dash.on_key("enter")
        assert dash.nav.screen == "stream"
        for _ in range(200):  # the first frames show the view without it; it appears when the worker is done
            if dash._inspection is not None:
                break
            await asyncio.sleep(0.05)
        assert dash._inspection is not None, "the model's view never arrived"
        await asyncio.sleep(0.2)  # a frame or two with it
        inspector_thread = dash._inspect_pool._threads  # type: ignore[union-attr]
    view = dash._inspection[1]
    assert view.channel == "ch1" and view.attention is not None
    assert all(t.ident != loop_thread for t in inspector_thread)
    assert "newest window, ch1, ln µV²/Hz" in out.getvalue() and "attention" in out.getvalue()
