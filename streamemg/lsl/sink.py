"""``--output lsl``: estimates as Lab Streaming Layer outlets, so LabRecorder can record them next to the raw EMG.

For every input stream (on its announcement) an outlet named ``streamemg-<stream name>``:

* type ``EMGEstimate``, irregular rate, 3 float32 channels labelled ``Normal``, ``ALS``, ``Myopathy`` holding
  the rolling class probabilities (NaN before the first usable window);
* one sample per estimate, time-stamped with the estimate's stream time when the input is an LSL stream
  (that time is already in this machine's LSL clock, so estimates line up with the raw EMG in an XDF file),
  else with ``local_clock()`` at publication;
* a stable ``source_id`` (``streamemg-estimate:<stream id>``), so recorders reconnect after a restart.

Plus one string marker outlet ``streamemg-markers`` (type ``Markers``) carrying ``"<stream name>: <label>"``
whenever a stream's label changes (``untrained`` for an untrained model, ``none`` while withheld).

When estimates carry quantitative MUAP analysis (``qemg``), one more string outlet ``<marker name>-qemg``
(type ``QEMG``), created with the first such estimate, carries it as one JSON object per estimate:
``{"stream": "<stream name>", "units": ..., "amplitude_uv": ..., ...}`` (docs/qemg.md).

URI: ``lsl`` (or ``lsl:?prefix=streamemg-&markers=streamemg-markers``). Outlets are created off the event
loop; ``push_sample`` of three floats costs a few microseconds, so pushes happen inline (the time of the
slowest push is kept in :attr:`LSLSink.push_max_ms`).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from ..errors import ConfigError, SinkError
from ..types import CLASS_NAMES, Estimate, StreamInfo
from .executor import LSLExecutor, import_pylsl

#: LSL content type of the estimate outlets.
ESTIMATE_TYPE = "EMGEstimate"
#: LSL content type of the marker outlet.
MARKER_TYPE = "Markers"
#: LSL content type of the QEMG outlet.
QEMG_TYPE = "QEMG"


def _release_blocking(holder: list[Any]) -> None:
    while holder:
        obj = holder.pop()
        del obj


class LSLSink:
    """Publishes rolling estimates and label-change markers as LSL outlets.

    Args:
        prefix: outlet name prefix (``streamemg-`` gives ``streamemg-Amp1``).
        marker_name: name of the string marker outlet.
        uri: the output URI (for messages).
    """

    def __init__(self, prefix: str = "streamemg-", marker_name: str = "streamemg-markers", uri: str = "lsl") -> None:
        if not marker_name:
            raise ConfigError("LSLSink.marker_name='': give the marker outlet a name, e.g. streamemg-markers")
        self.name = "lsl"
        self.uri = uri
        self.prefix = prefix
        self.marker_name = marker_name
        self._pylsl: Any = None
        self._executor: LSLExecutor | None = None
        self._outlets: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        self._lsl_time: dict[str, bool] = {}
        self._labels: dict[str, str] = {}
        self._marker: Any = None
        self._qemg: Any = None  # the QEMG outlet, created with the first estimate that carries qemg
        self._closed = False
        #: samples pushed per outlet name
        self.pushed: dict[str, int] = {}
        #: markers pushed
        self.markers = 0
        #: slowest single publication (estimate + marker), ms
        self.push_max_ms = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> LSLSink:
        self._pylsl = import_pylsl()
        self._executor = LSLExecutor(f"lsl-out-{uuid.uuid4().hex[:6]}", 1)
        self._marker = await self._executor.call(
            self._make_marker_outlet, timeout_s=10.0, what=f"creating LSL outlet {self.marker_name!r}"
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Destroy every outlet (recorders see the streams end). Idempotent."""
        if self._closed:
            return
        self._closed = True
        holder: list[Any] = list(self._outlets.values())
        self._outlets.clear()
        for attr in ("_marker", "_qemg"):
            if getattr(self, attr) is not None:
                holder.append(getattr(self, attr))
                setattr(self, attr, None)
        ex, self._executor = self._executor, None
        if ex is not None:
            try:
                if holder:
                    await ex.call(_release_blocking, holder, timeout_s=10.0, what="closing LSL outlets")
            finally:
                holder.clear()
                ex.close()

    # ------------------------------------------------------------------ outlets
    def _make_marker_outlet(self) -> Any:
        pylsl = self._pylsl
        info = pylsl.StreamInfo(
            self.marker_name,
            MARKER_TYPE,
            1,
            pylsl.IRREGULAR_RATE,
            pylsl.cf_string,
            f"streamemg-markers:{self.marker_name}",
        )
        desc = info.desc()
        desc.append_child_value("manufacturer", "streamemg")
        desc.append_child_value("content", "label changes of the streamemg estimates: '<stream name>: <label>'")
        return pylsl.StreamOutlet(info, chunk_size=0, max_buffered=360)

    def _make_qemg_outlet(self) -> Any:
        pylsl = self._pylsl
        name = f"{self.marker_name}-qemg"
        info = pylsl.StreamInfo(name, QEMG_TYPE, 1, pylsl.IRREGULAR_RATE, pylsl.cf_string, f"streamemg-qemg:{name}")
        desc = info.desc()
        desc.append_child_value("manufacturer", "streamemg")
        desc.append_child_value("content", "quantitative MUAP analysis per estimate, JSON: {'stream': name, ...}")
        return pylsl.StreamOutlet(info, chunk_size=0, max_buffered=360)

    def _make_estimate_outlet(self, outlet_name: str, info: StreamInfo) -> Any:
        pylsl = self._pylsl
        sinfo = pylsl.StreamInfo(
            outlet_name,
            ESTIMATE_TYPE,
            len(CLASS_NAMES),
            pylsl.IRREGULAR_RATE,
            pylsl.cf_float32,
            f"streamemg-estimate:{info.stream_id}",
        )
        desc = sinfo.desc()
        desc.append_child_value("manufacturer", "streamemg")
        channels = desc.append_child("channels")
        for cls in CLASS_NAMES:
            ch = channels.append_child("channel")
            ch.append_child_value("label", cls)
            ch.append_child_value("unit", "probability")
            ch.append_child_value("type", "Probability")
        src = desc.append_child("input_stream")
        src.append_child_value("name", info.name)
        src.append_child_value("stream_id", info.stream_id)
        src.append_child_value("source", info.source)
        src.append_child_value("nominal_srate", f"{info.fs:g}")
        desc.append_child_value("content", "rolling class probabilities (exponential smoothing of window estimates)")
        return pylsl.StreamOutlet(sinfo, chunk_size=0, max_buffered=360)

    def outlet_name(self, stream_id: str) -> str | None:
        """The name of the estimate outlet of ``stream_id`` (None before its announcement)."""
        return self._names.get(stream_id)

    async def announce(self, info: StreamInfo) -> None:
        """Create the stream's estimate outlet (once; a re-announcement keeps the outlet)."""
        if self._executor is None:
            raise SinkError("the LSL output is not open; use it as `async with`")
        self._lsl_time[info.stream_id] = info.source.startswith("lsl:")
        if info.stream_id in self._outlets:
            return
        name = f"{self.prefix}{info.name}"
        taken = set(self._names.values())
        k = 2
        unique = name
        while unique in taken:
            unique = f"{name}#{k}"
            k += 1
        try:
            outlet = await self._executor.call(
                self._make_estimate_outlet, unique, info, timeout_s=10.0, what=f"creating LSL outlet {unique!r}"
            )
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"could not create LSL outlet {unique!r}: {exc}") from exc
        self._outlets[info.stream_id] = outlet
        self._names[info.stream_id] = unique
        self.pushed[unique] = 0

    async def send(self, estimate: Estimate) -> None:
        """Push the rolling probabilities, and a marker when the label changed."""
        if self._closed:
            return
        outlet = self._outlets.get(estimate.stream_id)
        if outlet is None:
            # an estimate without announcement (should not happen in the pipeline): announce from what we know
            await self.announce(StreamInfo(estimate.stream_id, estimate.name, 1.0, ("?",)))
            outlet = self._outlets[estimate.stream_id]
        if estimate.qemg is not None and self._qemg is None and self._executor is not None:
            self._qemg = await self._executor.call(
                self._make_qemg_outlet, timeout_s=10.0, what=f"creating LSL outlet {self.marker_name}-qemg"
            )
        t_start = time.perf_counter()
        pylsl = self._pylsl
        stamp = float(estimate.time) if self._lsl_time.get(estimate.stream_id, False) else pylsl.local_clock()
        if not math.isfinite(stamp):
            stamp = pylsl.local_clock()
        values = [float(v) for v in estimate.rolling]
        try:
            outlet.push_sample(values, stamp)
            name = self._names[estimate.stream_id]
            self.pushed[name] += 1
            label = "untrained" if not estimate.trained else (estimate.label or "none")
            if self._labels.get(estimate.stream_id) != label:
                self._labels[estimate.stream_id] = label
                if self._marker is not None:
                    self._marker.push_sample([f"{estimate.name}: {label}"], stamp)
                    self.markers += 1
            if estimate.qemg is not None and self._qemg is not None:
                self._qemg.push_sample([json.dumps({"stream": estimate.name, **estimate.qemg}, allow_nan=False)], stamp)
        except (RuntimeError, ValueError) as exc:
            raise SinkError(f"LSL outlet for {estimate.name!r}: push failed ({exc})") from exc
        self.push_max_ms = max(self.push_max_ms, (time.perf_counter() - t_start) * 1000.0)


def from_uri(uri: str) -> LSLSink:
    """``lsl`` or ``lsl:?prefix=P&markers=NAME`` -> an (un-entered) LSLSink."""
    scheme, _, rest = uri.partition(":")
    if scheme.lower() != "lsl":
        raise ConfigError(f"output {uri!r} is not an lsl output; write --output lsl")
    body, _, query = rest.partition("?")
    if body.strip():
        raise ConfigError(f"output {uri!r}: write --output lsl (options as lsl:?prefix=streamemg-&markers=NAME)")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - {"prefix", "markers"}
    if unknown:
        raise ConfigError(f"output {uri!r}: unknown option(s) {', '.join(sorted(unknown))}; known: prefix, markers")
    return LSLSink(
        prefix=params.get("prefix", "streamemg-"), marker_name=params.get("markers", "streamemg-markers"), uri=uri
    )
