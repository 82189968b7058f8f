"""The inference engine: a dynamic batcher that classifies the windows of every stream on one device.

How a window flows::

    submit_nowait / submit  ->  bounded deque  ->  worker task (event loop): takes the oldest window, waits at most
    max_wait_ms (counted from that window's submission) for company or until max_batch rows are queued
    ->  one call on the single inference thread: copy the rows into a preallocated staging buffer (pinned on CUDA,
    non-blocking copy to the device), features + model + softmax under torch.inference_mode
    ->  back on the loop: on_result(window, probs (C, K)) for each window, in submission order.

Every channel of a window is one row of the batch (``(B, T)`` float32 µV at the model rate); rows of all streams
share one forward call. Fusing a window's channels into one estimate is the caller's job (see
``streamemg.estimates.fuse_channels``).

Failure handling: a forward that raises (e.g. out of memory) is retried in halves down to single rows; if a row
still fails on a GPU the engine moves the model to the CPU for good and retries there. Windows that cannot be
classified at all (or whose call exceeds ``timeout_s``) get all-NaN probabilities, so callers treat them as
unusable; every failure is counted in :attr:`EngineStats.errors`. The event loop never crashes on a failing
device. An exception raised by ``on_result`` itself is a bug in the caller and is not swallowed: the worker stops
and ``submit``, ``drain`` and ``__aexit__`` re-raise it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .clock import Clock, monotonic
from .errors import ConfigError, InferenceError
from .model import ModelBundle
from .types import Window

__all__ = ["EngineSettings", "EngineStats", "InferenceEngine", "select_device"]

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class EngineSettings:
    """Batching and device settings of :class:`InferenceEngine`.

    Attributes:
        max_batch: most rows (window channels) per forward call.
        max_wait_ms: longest time (ms) the oldest queued window waits for company before its batch runs.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: torch intra-op threads (process wide); None leaves torch's default.
        queue_size: most windows waiting; ``submit_nowait`` drops (and counts) beyond it, ``submit`` waits.
        timeout_s: longest one forward call may take before its windows are given up (device hung).
        warmup: run one forward at the largest batch size on entry, so the first real batch is not slow.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    device: str = "auto"
    threads: int | None = None
    queue_size: int = 4096
    timeout_s: float = 30.0
    warmup: bool = True

    def __post_init__(self) -> None:
        if not (_is_int(self.max_batch) and self.max_batch >= 1):
            raise ConfigError(f"EngineSettings.max_batch={self.max_batch!r}: must be an integer >= 1 (e.g. 64)")
        if not (_is_real(self.max_wait_ms) and 0 <= self.max_wait_ms <= 10_000):
            raise ConfigError(
                f"EngineSettings.max_wait_ms={self.max_wait_ms!r}: give a wait in milliseconds in [0, 10000] (e.g. 5)"
            )
        if not (isinstance(self.device, str) and _DEVICE_RE.match(self.device)):
            raise ConfigError(f"EngineSettings.device={self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.threads is not None and not (_is_int(self.threads) and self.threads >= 1):
            raise ConfigError(
                f"EngineSettings.threads={self.threads!r}: give an integer >= 1, or None for torch's default"
            )
        if not (_is_int(self.queue_size) and self.queue_size >= 1):
            raise ConfigError(f"EngineSettings.queue_size={self.queue_size!r}: must be an integer >= 1 (e.g. 4096)")
        if not (_is_real(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"EngineSettings.timeout_s={self.timeout_s!r}: give a positive number of seconds")
        if not isinstance(self.warmup, bool):
            raise ConfigError(f"EngineSettings.warmup={self.warmup!r}: must be true or false")


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select_device(
    requested: str = "auto", cuda_available: Callable[[], bool] = torch.cuda.is_available
) -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a torch device.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the name is unknown.
    """
    if not (isinstance(requested, str) and _DEVICE_RE.match(requested)):
        raise ConfigError(f"device {requested!r} is not known: use auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if requested.startswith("cuda") and not cuda_available():
        raise ConfigError(
            f"device {requested!r} was requested but CUDA is not available here (torch {torch.__version__}); "
            "use --device cpu (or --device auto to take a GPU only when there is one)"
        )
    return torch.device(requested)


@dataclass
class EngineStats:
    """Counters of one engine (read them from the loop thread; they only grow, except ``queued``).

    Attributes:
        windows: windows classified (results delivered, NaN ones included).
        rows: rows (window channels) classified.
        batches: forward calls made (one per batch).
        batch_max: largest batch (rows).
        dropped: windows refused by ``submit_nowait`` because the queue was full.
        errors: forward calls that raised or timed out.
        failed: windows delivered with NaN probabilities because the device failed.
        busy_s: seconds the inference thread spent on batches (staging copy + forward), by the engine's clock.
        queued: windows waiting now; ``queue_high``: the most ever waiting at once.
        fallbacks: times the engine moved from a GPU to the CPU after failures.
    """

    windows: int = 0
    rows: int = 0
    batches: int = 0
    batch_max: int = 0
    dropped: int = 0
    errors: int = 0
    failed: int = 0
    busy_s: float = 0.0
    queued: int = 0
    queue_high: int = 0
    fallbacks: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def batch_mean(self) -> float:
        """Mean rows per forward call (0 before the first)."""
        return self.rows / self.batches if self.batches else 0.0

    def snapshot(self) -> EngineStats:
        """An independent copy."""
        return replace(self, batch_sizes=collections.Counter(self.batch_sizes))


_Item = tuple[Window, float]  # (window, loop time of submission)


class InferenceEngine:
    """Dynamic batcher: all streams' windows, features + model in one call on one device, off the event loop.

    Args:
        bundle: the model (weights + config); ``bundle.config.window_samples`` is the expected window length.
        settings: batching and device settings.
        on_result: called in the event-loop thread as ``on_result(window, probs)`` with ``probs`` float32
            ``(C, K)`` softmax probabilities, one row per channel (all NaN if the device failed on this window).
        clock: monotonic seconds, for :attr:`EngineStats.busy_s`.
        model: optional module to run instead of ``bundle.build()`` (``(B, T) -> (B, K)`` logits), e.g. a
            compiled or exported variant; it is moved to the engine's device.
        cuda_available: injectable CUDA probe (tests).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        settings: EngineSettings | None = None,
        on_result: Callable[[Window, np.ndarray], None] | None = None,
        clock: Clock = monotonic,
        *,
        model: nn.Module | None = None,
        cuda_available: Callable[[], bool] = torch.cuda.is_available,
    ) -> None:
        self.bundle = bundle
        self.settings = settings = settings or EngineSettings()
        self.on_result = on_result or (lambda window, probs: None)
        self.clock = clock
        self.device = select_device(settings.device, cuda_available)
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        self.window_samples = bundle.config.window_samples
        self.n_classes = bundle.config.n_classes
        self.model: nn.Module = (model if model is not None else bundle.build()).to(self.device).eval()
        self.stats = EngineStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._pending = 0  # accepted windows without a result yet
        self._wake = asyncio.Event()  # set: first window queued, or max_batch rows queued
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # model / device swaps vs. predict() from another thread
        self._staging = self._make_staging(settings.max_batch)

    # ------------------------------------------------------------------ lifecycle
    def _make_staging(self, rows: int) -> torch.Tensor:
        """Preallocated (rows, T) float32 host buffer; pinned when the device is CUDA (async H2D copies)."""
        pin = self.device.type == "cuda"
        return torch.empty((rows, self.window_samples), dtype=torch.float32, pin_memory=pin)

    async def __aenter__(self) -> InferenceEngine:
        if self._task is not None:
            return self
        self._failure = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamemg-infer")
        if self.settings.warmup:
            loop = asyncio.get_running_loop()
            zeros = np.zeros((self.settings.max_batch, self.window_samples), dtype=np.float32)
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(self._executor, self._run_batch, [zeros]), self.settings.timeout_s
                )
            except TimeoutError:
                self.stats.errors += 1
                log.warning("engine warm-up on %s took longer than %.1f s", self.device, self.settings.timeout_s)
                self._replace_executor()
        self._task = asyncio.create_task(self._worker(), name="streamemg-engine")
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Drain pending windows (on a normal exit), stop the worker and the inference thread. Idempotent."""
        task = self._task
        if task is None:
            return
        try:
            if exc_type is None and self._failure is None:
                await self.drain()
        finally:
            self._task = None
            if not task.done():
                task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved here; re-raised below as self._failure
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        if exc_type is None and self._failure is not None:
            raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure

    # ------------------------------------------------------------------ submission
    def _check(self, window: Window) -> None:
        if self._failure is not None:
            raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure
        data = window.data
        if data.ndim != 2 or data.shape[1] != self.window_samples or data.shape[0] < 1:
            raise ValueError(
                f"window of stream {window.stream_id!r} has shape {tuple(data.shape)}; the model expects "
                f"(channels, {self.window_samples})"
            )

    def submit_nowait(self, window: Window) -> bool:
        """Queue a window; False (and ``stats.dropped`` + 1) if the queue is full. Call from the loop thread."""
        self._check(window)
        if len(self._queue) >= self.settings.queue_size:
            self.stats.dropped += 1
            return False
        self._enqueue(window)
        return True

    async def submit(self, window: Window) -> None:
        """Queue a window, waiting for space when the queue is full (back-pressure for offline sources)."""
        self._check(window)
        while len(self._queue) >= self.settings.queue_size:
            self._space.clear()
            await self._space.wait()
            self._check(window)
        self._enqueue(window)

    def _enqueue(self, window: Window) -> None:
        loop_time = asyncio.get_running_loop().time()
        was_empty = not self._queue
        self._queue.append((window, loop_time))
        self._queued_rows += window.n_channels
        self._pending += 1
        self._idle.clear()
        st = self.stats
        st.queued = len(self._queue)
        st.queue_high = max(st.queue_high, st.queued)
        if was_empty or self._queued_rows >= self.settings.max_batch:
            self._wake.set()

    async def drain(self) -> None:
        """Return when every accepted window has had its result delivered (raises if the worker failed)."""
        while self._pending:
            if self._failure is not None:
                raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure
            if self._task is None:
                raise InferenceError("drain() needs a running engine: use `async with engine:`")
            idle = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({idle, self._task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
        if self._failure is not None:
            raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure

    # ------------------------------------------------------------------ worker (event loop)
    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        max_batch, max_wait = self.settings.max_batch, self.settings.max_wait_ms / 1000.0
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                deadline = self._queue[0][1] + max_wait
                while self._queued_rows < max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        break
                batch = self._take(max_batch)
                probs = await self._classify([w.data for w, _ in batch])
                off = 0
                for w, _ in batch:
                    c = w.n_channels
                    self._pending -= 1
                    self.on_result(w, probs[off : off + c])
                    off += c
                if not self._pending:
                    self._idle.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            log.error("inference engine stopped: on_result raised %r", exc)
            self._idle.set()
            self._space.set()
            raise

    def _take(self, max_batch: int) -> list[_Item]:
        """Pop the oldest windows whose rows fit in ``max_batch`` (always at least one)."""
        batch: list[_Item] = []
        rows = 0
        q = self._queue
        while q and (not batch or rows + q[0][0].n_channels <= max_batch):
            item = q.popleft()
            batch.append(item)
            rows += item[0].n_channels
        self._queued_rows -= rows
        self.stats.queued = len(q)
        self._space.set()
        return batch

    async def _classify(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Run one batch on the inference thread with a timeout; (rows, K) probabilities (NaN on failure)."""
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        rows = sum(a.shape[0] for a in arrays)
        st = self.stats
        t0 = self.clock()
        try:
            probs = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._run_batch, arrays), self.settings.timeout_s
            )
        except TimeoutError:
            st.errors += 1
            log.error(
                "inference on %s took longer than %.1f s for %d rows; giving those windows up",
                self.device,
                self.settings.timeout_s,
                rows,
            )
            self._replace_executor()
            probs = None
        except InferenceError as exc:
            log.error("%s", exc)
            probs = None
        st.busy_s += self.clock() - t0
        st.batches += 1
        st.rows += rows
        st.windows += len(arrays)
        st.batch_max = max(st.batch_max, rows)
        st.batch_sizes[rows] += 1
        if probs is None:
            st.failed += len(arrays)
            probs = np.full((rows, self.n_classes), np.nan, dtype=np.float32)
        return probs

    def _replace_executor(self) -> None:
        """Abandon a hung inference thread: new thread, new staging buffer (the old thread may still read its own)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamemg-infer")
        self._staging = self._make_staging(self.settings.max_batch)

    # ------------------------------------------------------------------ inference thread
    def _run_batch(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Inference thread: stage ``arrays`` (each (C_i, T)) into one (B, T) block and classify it."""
        rows = sum(a.shape[0] for a in arrays)
        staging = self._staging if rows <= self._staging.shape[0] else self._make_staging(rows)
        host = staging.numpy()
        off = 0
        for a in arrays:
            np.copyto(host[off : off + a.shape[0]], a, casting="same_kind")
            off += a.shape[0]
        return self._forward_robust(staging[:rows])

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        """(B, T) host tensor -> (B, K) float32 probabilities, on the current device."""
        with torch.inference_mode():
            xd = x.to(self.device, non_blocking=True) if self.device.type != "cpu" else x
            out = torch.softmax(self.model(xd).float(), dim=-1)
            return out.cpu().numpy()

    def _forward_robust(self, x: torch.Tensor) -> np.ndarray:
        """:meth:`_forward` with retries in halves, then a permanent move to the CPU; raises InferenceError."""
        try:
            return self._forward_halving(x)
        except Exception as exc:
            if self.device.type == "cpu":
                raise InferenceError(f"inference failed on the CPU for a batch of {x.shape[0]} rows: {exc!r}") from exc
            self._fall_back_to_cpu(exc)
        try:
            return self._forward_halving(x)
        except Exception as exc:
            raise InferenceError(f"inference failed on the CPU too for {x.shape[0]} rows: {exc!r}") from exc

    def _forward_halving(self, x: torch.Tensor) -> np.ndarray:
        try:
            return self._forward(x)
        except Exception as exc:
            self.stats.errors += 1
            if x.shape[0] <= 1:
                raise
            log.warning("forward of %d rows on %s failed (%r); retrying in halves", x.shape[0], self.device, exc)
            _empty_cache(self.device)
            half = x.shape[0] // 2
            return np.concatenate([self._forward_halving(x[:half]), self._forward_halving(x[half:])])

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        log.error("inference on %s keeps failing (%r); moving the model to the CPU", self.device, exc)
        with self._lock:
            old = self.device
            self.model = self.model.to("cpu")
            self.device = torch.device("cpu")
            self.stats.fallbacks += 1
            _empty_cache(old)

    # ------------------------------------------------------------------ offline
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Synchronous offline inference: ``(B, T)`` float32 µV -> ``(B, K)`` probabilities, in max_batch slices.

        Runs on the calling thread (not the engine's), so it may be used without entering the engine.
        """
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"predict expects (B, T), got shape {arr.shape}")
        out = np.empty((arr.shape[0], self.n_classes), dtype=np.float32)
        step = self.settings.max_batch
        for i in range(0, arr.shape[0], step):
            out[i : i + step] = self._forward_robust(torch.from_numpy(arr[i : i + step]))
        return out


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # best effort only
            pass
