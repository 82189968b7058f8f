"""Lab Streaming Layer plumbing shared by the LSL source, the LSL outputs, the amplifier simulator and XDF replay.

Three things live here:

* :func:`import_pylsl`: the one place that imports ``pylsl``. It is imported lazily, on first use, so that a
  machine without liblsl (older glibc, some ARM boards) can still use every other part of streamemg; when the
  import fails the caller gets :class:`~streamemg.errors.LSLUnavailableError` with install guidance.
* :class:`LSLExecutor`: runs blocking pylsl calls (resolving, opening inlets, pulling, creating outlets) off
  the event loop, on its own small thread pool, always with a finite timeout.
* Channel metadata functions that need no liblsl: unit names to µV factors (:func:`unit_scale_to_uv`) and the
  per-stream channel selection (:func:`plan_channels`), used for live streams and XDF files alike.

Processes that create LSL objects for tests, simulators or benchmarks call
:func:`streamemg.lsl.config.configure_machine_scope` first, so that discovery stays on this machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from ..errors import LSLUnavailableError as LSLUnavailableError
from ..errors import SourceError
from ..types import FloatArray

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How to get liblsl when ``import pylsl`` fails; part of every LSLUnavailableError message.
INSTALL_HINT = (
    "Install the Python bindings with `pip install pylsl` (the wheels ship liblsl for common platforms). "
    "Where the bundled library does not load (older glibc, some ARM boards), install liblsl itself, e.g. "
    "`conda install -c conda-forge liblsl`, or build it from https://github.com/sccn/liblsl and point pylsl at "
    "it with the environment variable PYLSL_LIB=/path/to/liblsl.so. Everything in streamemg except the lsl: "
    "source, `--output lsl`, `streamemg simulate lsl` and XDF replay works without it."
)

_pylsl: ModuleType | None = None


def import_pylsl() -> ModuleType:
    """Import and return ``pylsl`` (cached).

    Raises:
        LSLUnavailableError: pylsl is not installed or liblsl could not be loaded; the message says how to
            install it.
    """
    global _pylsl
    if _pylsl is not None:
        return _pylsl
    apply_scope_policy()
    try:
        module = importlib.import_module("pylsl")
        module.local_clock()  # proves that the native library is usable
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:
        raise LSLUnavailableError(
            f"Lab Streaming Layer is not available ({type(exc).__name__}: {exc}). " + INSTALL_HINT
        ) from exc
    _pylsl = module
    return module


def apply_scope_policy() -> None:
    """Confine LSL to this machine unless the user asked for more.

    liblsl reads its configuration once, before the first LSL object. streamemg keeps discovery on the
    loopback interface by default; ``LSLAPICFG`` (your own liblsl configuration) or ``STREAMEMG_LSL_SCOPE=lan``
    (liblsl's defaults: discovery on the local network) opt out, for amplifiers on other machines.
    """
    if os.environ.get("LSLAPICFG"):
        return
    if os.environ.get("STREAMEMG_LSL_SCOPE", "machine").lower() in ("lan", "site", "default"):
        return
    from .config import configure_machine_scope

    configure_machine_scope()


def lsl_available() -> bool:
    """True when pylsl and liblsl can be loaded in this process."""
    try:
        import_pylsl()
    except LSLUnavailableError:
        return False
    return True


class LSLExecutor:
    """Runs blocking pylsl calls off the event loop with a finite timeout.

    Every call to liblsl that may block (resolving, opening an inlet, the first clock-offset query, pulling,
    creating or destroying outlets) goes through :meth:`call`. The executor owns a small thread pool of its
    own, so a slow LSL call never occupies the loop's default executor or the inference engine's threads.
    With ``max_workers=1`` calls run strictly one after another, which is what pylsl objects need (they are
    not safe for concurrent use from several threads).

    Args:
        name: thread-name prefix (shows up in stack dumps).
        max_workers: threads in the pool (>= 1).
    """

    def __init__(self, name: str, max_workers: int = 1) -> None:
        if max_workers < 1:
            raise ValueError(f"LSLExecutor max_workers={max_workers!r}: must be at least 1")
        self.name = name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=name
        )

    async def call(self, fn: Callable[..., T], /, *args: Any, timeout_s: float, what: str, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the pool and return its result.

        The timeout counts only the call itself, from the moment a worker thread starts it: time spent waiting
        behind other calls in the pool is not held against it (with many inlets opening at once, a quick call
        queued behind them would otherwise time out without ever having run). Every call ahead is bounded by
        its own timeout, so the wait for a worker is finite too; cancelling the caller withdraws a queued call.

        Args:
            fn: a blocking callable (usually a pylsl call or a small function making several).
            timeout_s: seconds the call may run (finite, > 0).
            what: a short description used in the timeout message ("opening inlet for Amp1").

        Raises:
            SourceError: the call did not return within ``timeout_s`` of starting (the thread may still be busy
                with it; liblsl calls are always given their own finite timeouts so it will come back).
            SourceError: the executor was closed.
            Whatever ``fn`` raises, unchanged (callers convert pylsl errors where they know what they mean).
        """
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"LSLExecutor.call timeout_s={timeout_s!r}: give a finite number of seconds above 0")
        pool = self._pool
        if pool is None:
            raise SourceError(f"LSL worker {self.name!r} is closed; cannot run: {what}")
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def job() -> T:
            loop.call_soon_threadsafe(_set_started, started)
            return fn(*args, **kwargs)

        try:
            future = loop.run_in_executor(pool, job)
        except RuntimeError as exc:  # pool shut down between the check and the submit
            raise SourceError(f"LSL worker {self.name!r} is closed; cannot run: {what}") from exc
        try:
            if not future.done():
                waiters: set[asyncio.Future[Any]] = {started, future}
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            future.cancel()  # still queued: never runs; already running: finishes in the background
            raise
        if future.cancelled():
            raise SourceError(f"LSL worker {self.name!r} was closed before it could run: {what}")
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result and drops an outside
            # cancellation that arrives in the same loop iteration as the result, which would let a cancelled
            # poll loop run on forever.
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError as exc:
            raise SourceError(
                f"LSL call did not finish within {timeout_s:g} s: {what}. The machine may be overloaded or the "
                "stream's host unreachable."
            ) from exc

    def close(self) -> None:
        """Stop accepting calls; queued calls are cancelled, a running one finishes in the background.

        Idempotent.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._pool is None


def _set_started(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


# ---------------------------------------------------------------------------------------------- channel metadata

_UNIT_FACTORS: dict[str, float] = {
    "v": 1e6,
    "volt": 1e6,
    "volts": 1e6,
    "mv": 1e3,
    "millivolt": 1e3,
    "millivolts": 1e3,
    "uv": 1.0,
    "µv": 1.0,  # micro sign U+00B5
    "μv": 1.0,  # greek mu U+03BC
    "microvolt": 1.0,
    "microvolts": 1.0,
    "nv": 1e-3,
    "nanovolt": 1e-3,
    "nanovolts": 1e-3,
}

_EXPONENT = re.compile(r"^[+-]?\d{1,2}$")


def unit_scale_to_uv(unit: str | None) -> float | None:
    """The factor that turns values in ``unit`` into µV, or None when the unit is missing or not a voltage.

    Accepted spellings (case and blanks ignored): ``V``/``volts``, ``mV``/``millivolts``,
    ``uV``/``µV``/``μV``/``microvolts``, ``nV``/``nanovolts``, and the power-of-ten form some LSL apps
    write (MNE convention): ``"-6"`` means the values are in 10⁻⁶ V (µV), ``"-3"`` mV, ``"0"`` V.
    """
    if unit is None:
        return None
    key = re.sub(r"[\s_]+", "", unit).lower()
    if not key:
        return None
    if key in _UNIT_FACTORS:
        return _UNIT_FACTORS[key]
    if _EXPONENT.match(key):
        return float(10.0 ** (int(key) + 6))
    return None


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """Which channels of an LSL/XDF stream streamemg uses, and how to turn them into µV.

    Attributes:
        indices: positions of the kept channels in the stream's samples, ascending.
        labels: one label per kept channel.
        scales: float32 ``(len(indices),)``, the factor to µV per kept channel.
        units: the declared unit per kept channel ("" when none was declared).
        assumed_uv: labels of kept channels whose unit was missing or not a voltage (taken as µV as they are).
        n_stream_channels: channel count of the stream itself.
        types: the declared type per kept channel, lower case ("" when none was declared).
    """

    indices: tuple[int, ...]
    labels: tuple[str, ...]
    scales: FloatArray
    units: tuple[str, ...]
    assumed_uv: tuple[str, ...]
    n_stream_channels: int
    types: tuple[str, ...] = ()
    # derived once (apply runs for every chunk): keep every channel in order / any factor other than 1
    _keeps_all: bool = field(init=False, repr=False, compare=False, default=False)
    _scaling: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keeps_all", self.indices == tuple(range(self.n_stream_channels)))
        object.__setattr__(self, "_scaling", bool(np.any(np.asarray(self.scales) != 1.0)))

    @property
    def assumed_signal_uv(self) -> tuple[str, ...]:
        """The channels of :attr:`assumed_uv` that are EMG or of no declared type (worth a warning; a counter or
        trigger channel kept with ``channels=all`` is not)."""
        kinds = dict(zip(self.labels, self.types or ("",) * len(self.labels), strict=False))
        return tuple(lbl for lbl in self.assumed_uv if kinds.get(lbl, "") in ("", "emg"))

    @property
    def n_channels(self) -> int:
        return len(self.indices)

    @property
    def keeps_all(self) -> bool:
        """True when every stream channel is kept, in order."""
        return self._keeps_all

    @property
    def unit_scaling(self) -> bool:
        """True when at least one kept channel needs a factor other than 1."""
        return self._scaling

    def apply(self, samples: np.ndarray) -> FloatArray:
        """Select and scale: ``(n, n_stream_channels)`` any numeric dtype -> new ``(n, n_channels)`` float32 µV."""
        if self._keeps_all:
            out = np.array(samples, dtype=np.float32, copy=True, order="C")
        else:
            out = np.ascontiguousarray(samples[:, list(self.indices)], dtype=np.float32)
        if self._scaling:
            out *= self.scales
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for ``StreamInfo.meta``."""
        return {
            "indices": list(self.indices),
            "declared_units": list(self.units),
            "scale_to_uv": [float(s) for s in self.scales],
            "unit_assumed_uv": list(self.assumed_uv),
        }


def plan_channels(
    n_channels: int,
    labels: Sequence[str | None] | None,
    units: Sequence[str | None] | None,
    types: Sequence[str | None] | None,
    select: str = "emg",
    stream_name: str = "",
) -> ChannelPlan:
    """Choose the channels to classify and their µV factors from a stream's channel description.

    Args:
        n_channels: the stream's channel count.
        labels, units, types: per-channel entries of the description (``desc/channels/channel/...``); any of
            them may be None, shorter or longer than ``n_channels`` or hold None/"" entries.
        select: ``"emg"`` keeps the channels whose type is EMG when at least one channel declares that type,
            else all channels; ``"all"`` keeps every channel; otherwise a comma-separated list of labels.
        stream_name: used in error messages.

    Raises:
        SourceError: ``select`` names a label the stream does not have.
    """

    def entry(values: Sequence[str | None] | None, i: int) -> str:
        if values is None or i >= len(values) or values[i] is None:
            return ""
        return str(values[i]).strip()

    names = [entry(labels, i) or f"ch{i + 1}" for i in range(n_channels)]
    kinds = [entry(types, i).lower() for i in range(n_channels)]
    declared = [entry(units, i) for i in range(n_channels)]
    mode = select.strip()
    if mode.lower() == "all":
        keep = list(range(n_channels))
    elif mode.lower() == "emg":
        emg = [i for i, k in enumerate(kinds) if k == "emg"]
        keep = emg if emg else list(range(n_channels))
    else:
        wanted = [w.strip() for w in mode.split(",") if w.strip()]
        missing = [w for w in wanted if w not in names]
        if missing or not wanted:
            raise SourceError(
                f"stream {stream_name!r}: channels={select!r} names {missing or 'no channel'}; the stream's channels "
                f"are {', '.join(names)}. Use channels=emg (default), channels=all or a comma-separated list of these."
            )
        keep = sorted({names.index(w) for w in wanted})
    scales: list[float] = []
    assumed: list[str] = []
    for i in keep:
        factor = unit_scale_to_uv(declared[i])
        if factor is None:
            assumed.append(names[i])
            factor = 1.0
        scales.append(factor)
    return ChannelPlan(
        indices=tuple(keep),
        labels=tuple(names[i] for i in keep),
        scales=np.asarray(scales, dtype=np.float32),
        units=tuple(declared[i] for i in keep),
        assumed_uv=tuple(assumed),
        n_stream_channels=n_channels,
        types=tuple(kinds[i] for i in keep),
    )


def read_channel_desc(info: Any) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """Labels, units and types from a full pylsl ``StreamInfo``'s ``desc/channels/channel`` entries.

    Returns three lists with one entry per ``<channel>`` element found (None where an entry is missing);
    empty lists when the stream has no channel description. Blocking-free (reads the local XML copy).
    """
    labels: list[str | None] = []
    units: list[str | None] = []
    types: list[str | None] = []
    channels = info.desc().child("channels")
    if channels.empty():
        return labels, units, types
    ch = channels.child("channel")
    while not ch.empty():
        for name, out in (("label", labels), ("unit", units), ("type", types)):
            value = ch.child_value(name)
            out.append(value if value else None)
        ch = ch.next_sibling("channel")
    return labels, units, types
