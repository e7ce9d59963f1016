"""flowd's OpenTelemetry exporter: every workflow's finished spans to a collector.

The span feed (feed.py) turns the records the index reads into finished spans, on
the event loop, and puts them in a bounded queue (queue.py). ``Exporter.run`` sends
them in batches (BATCH_SPANS, or what came within BATCH_WAIT of the first), each POSTed
by ``post`` in a worker thread, so neither indexing nor clients ever wait on the
network. A batch that gets no usable answer (no connection, a timeout, 429, 502, 503,
504) is kept and sent again after a backoff (0.5 s doubling to 30 s); one the collector
rejects (any other status) is dropped and counted. Runs found mid-way are rebuilt here
too, one at a time, in a worker thread. ``close`` sends what is queued, within a
deadline. Each loop outlives its own failures: flowd never stops for the exporter.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from doeff_flow_core.escape import safe, safe_clip
from doeff_flow_core.timeline.spans import Span
from flowd.errors import OtlpSettingError
from flowd.otlp.endpoint import OPTION, Endpoint, endpoint_from
from flowd.otlp.feed import WHOLE_RUN, Rebuilt, Replay, SpanFeed, rebuild
from flowd.otlp.health import Failed, Health, Notice, backoff
from flowd.otlp.post import post
from flowd.otlp.queue import QUEUE_LIMIT, SpanQueue

log = logging.getLogger("flowd")

BATCH_SPANS: Final = 512  # a batch is sent once this many spans wait (or BATCH_WAIT passed)
BATCH_WAIT: Final = 1.0
# When more wait (spans come faster than batches of BATCH_SPANS go), a batch takes up to
# BATCH_MOST of them, past the first BATCH_SPANS no more than BATCH_WEIGHT spans and
# events (a few MB of OTLP/JSON): each request costs flowd more than its spans do.
BATCH_MOST: Final = 8192
BATCH_WEIGHT: Final = 16_384
TIMEOUT: Final = 10.0  # for one request, in all
CLOSE_SECONDS: Final = 3.0  # to send what is queued when flowd stops
SWEEP_SECONDS: Final = 2.0  # between looks for runs whose writer is gone
BUG_PAUSE: Final = 1.0  # after an unexpected failure: a loop never spins on a bug
MESSAGE_CHARS: Final = 200  # of an exception's message (it may quote a path, a record)


def exporter_from(
    option: str | None,
    headers: Sequence[str],
    environ: Mapping[str, str],
    queue_limit: int = QUEUE_LIMIT,
    timeout: float = TIMEOUT,
) -> Exporter | None:
    """The exporter the options and environment ask for; None when they ask for none.
    Wrong settings are logged, and give an exporter that exports nothing (``invalid``)."""
    try:
        endpoint = endpoint_from(option, headers, environ)
    except OtlpSettingError as exc:
        log.error("otlp: %s; not exporting spans", safe_clip(str(exc), MESSAGE_CHARS))
        return Exporter(None, Health(exc.endpoint, invalid=str(exc)))
    if endpoint is None:
        return None
    source = "" if endpoint.source == OPTION else f" (from {endpoint.source})"
    log.info("otlp: exporting spans to %s%s", endpoint.shown, source)
    return Exporter(endpoint, Health(endpoint.shown), queue_limit, timeout)


class Exporter:
    def __init__(
        self,
        endpoint: Endpoint | None,
        health: Health,
        queue_limit: int = QUEUE_LIMIT,
        timeout: float = TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.health = health
        self.timeout = timeout
        self.queue = SpanQueue(queue_limit)
        # None when there is nothing to export to: the daemon then feeds nothing
        self.feed = SpanFeed(self._offer, self._ask_rebuild) if endpoint is not None else None
        self._batch: list[Span] = []  # taken from the queue, not sent yet
        self.produced = 0  # spans that came to the exporter (see ``stats``)
        self._failures = 0  # in a row
        self._replays: deque[Replay] = deque()
        self._wake = anyio.Event()  # enough spans came, or closing
        self._wanted = 1  # queued spans that are enough to wake the sender
        self._replay_wake = anyio.Event()
        self._closed = anyio.Event()
        self._done = anyio.Event()  # the sender stopped (closing)

    @property
    def queued(self) -> int:
        return len(self.queue) + len(self._batch)

    def stats(self) -> dict[str, Any]:
        """The ``otlp`` object of ``ping`` and ``stats``: ``endpoint``, ``state`` and
        ``last_error`` (see health.py), and these figures, in spans unless they say:

        - ``produced_spans``: spans that ended and came to the exporter since flowd
          started. At every moment it equals ``sent_spans + dropped_spans +
          rejected_spans + queued``: a span is counted once, where it is now.
        - ``sent_spans``: the collector took them (2xx, less a partial success's
          ``rejectedSpans``).
        - ``rejected_spans``: the collector refused them (a status that is not "try again
          later", or a partial success): they are not sent again.
        - ``dropped_spans``: flowd let them go unsent: the queue was full (the oldest go
          first: a collector too slow or down for long, or spans coming faster than they
          can be sent), or an unexpected failure while sending their batch.
        - ``failed_requests``: requests without a usable answer (no connection, a
          timeout, 429, 502, 503, 504); their spans stay queued and are sent again.
        - ``queued``: spans waiting, the batch being sent included.
        - ``queue_limit``: the queue's bound; past it the oldest spans are dropped.
        - ``queue_weight`` and ``queue_weight_limit``: spans plus their events in the
          queue (the batch being sent apart), and the bound on that.
        """
        return {
            **self.health.snapshot(self.queued),
            "produced_spans": self.produced,
            "queue_limit": self.queue.limit,
            "queue_weight": self.queue.total_weight,
            "queue_weight_limit": self.queue.weight_limit,
        }

    async def run(self) -> None:
        """Send spans until ``close``; rebuild runs found mid-way meanwhile."""
        if self.endpoint is None:
            return
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._rebuild_loop)
                group.start_soon(self._sweep_loop)
                await self._send_loop(self.endpoint)
                group.cancel_scope.cancel()
        finally:
            self._done.set()

    async def close(self, deadline: float = CLOSE_SECONDS) -> None:
        """Send what is queued (spans still open have not ended: they are not sent)
        within ``deadline`` seconds, without waiting to retry."""
        if self.endpoint is None:
            return
        queued, sent = self.queued, self.health.sent_spans
        self._closed.set()
        self._wake.set()
        with anyio.move_on_after(deadline):
            await self._done.wait()
        if queued:
            left = self.queued
            log.info(
                "otlp: stopping: %d queued spans sent, %d not sent",
                self.health.sent_spans - sent,
                left,
            )

    # -- the span feed's side (on the event loop, cheap) ------------------------------

    def _offer(self, spans: list[Span]) -> None:
        self.produced += len(spans)
        self._note(self.health.drop(self.queue.put(spans), self.queue.bound))
        if len(self.queue) >= self._wanted:  # not for every record: a wake costs more
            self._wake.set()

    def _ask_rebuild(self, replay: Replay) -> None:
        self._replays.append(replay)
        self._replay_wake.set()

    def _note(self, notice: Notice | None) -> None:
        if notice is not None:
            log.log(notice.level, "%s", notice.message)

    # -- sending ----------------------------------------------------------------------

    async def _send_loop(self, endpoint: Endpoint) -> None:
        trouble = _Trouble("sending spans")
        while True:
            try:
                if not (self._batch or await self._next_batch()):
                    return
                if not await self._send(endpoint, self._batch):
                    return  # stopping: no waiting to retry
                trouble.over()
            except Exception as exc:  # a bug: drop the batch rather than retry it forever
                trouble.met(exc)
                self.health.dropped_spans += len(self._batch)
                self._batch = []
                await anyio.sleep(BUG_PAUSE)

    async def _send(self, endpoint: Endpoint, batch: list[Span]) -> bool:
        """Send ``batch`` once; False when it failed and flowd is stopping."""
        outcome = await anyio.to_thread.run_sync(
            post, endpoint, batch, self.timeout, abandon_on_cancel=True
        )
        self._note(self.health.record(outcome, len(batch)))
        if not isinstance(outcome, Failed):
            self._failures = 0
            self._batch = []
            return True
        if self._closed.is_set():
            return False
        self._failures += 1
        with anyio.move_on_after(backoff(self._failures)):
            await self._closed.wait()
        return True

    async def _next_batch(self) -> bool:
        """Take the next batch from the queue once it is full or has waited BATCH_WAIT;
        False when closing with nothing left."""
        while not self.queue:
            if self._closed.is_set():
                return False
            await self._spans_or_closing(None, 1)
        deadline = anyio.current_time() + BATCH_WAIT
        full = min(BATCH_SPANS, self.queue.limit)  # a small queue is not left to overflow
        while len(self.queue) < full and not self._closed.is_set():
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            await self._spans_or_closing(remaining, full)
        self._batch = self.queue.take(BATCH_MOST, BATCH_WEIGHT, least=BATCH_SPANS)
        if not self.queue:
            self.health.drained()
        return True

    async def _spans_or_closing(self, timeout: float | None, wanted: int) -> None:
        self._wanted = wanted
        self._wake = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._wake.wait()

    async def _sweep_loop(self) -> None:
        """A killed writer writes no terminal record: its run's open calls are sent,
        incomplete, once flowd sees it is gone (as ``ps`` says ``lost``) and has read its
        trace to the end."""
        assert self.feed is not None
        trouble = _Trouble("ending runs whose writer is gone")
        while True:
            await anyio.sleep(SWEEP_SECONDS)
            try:
                self.feed.sweep()
            except Exception as exc:  # a bug, or a record liveness cannot judge: go on
                trouble.met(exc)
            else:
                trouble.over()

    # -- rebuilding runs found mid-way ------------------------------------------------

    async def _rebuild_loop(self) -> None:
        trouble = _Trouble("following")
        while True:
            while not self._replays:
                self._replay_wake = anyio.Event()
                await self._replay_wake.wait()
            replay = self._replays.popleft()
            try:
                await self._rebuild(replay)
            except Exception as exc:  # a bug: flowd goes on
                trouble.met(exc, replay.path)
            else:
                trouble.over()

    async def _rebuild(self, replay: Replay) -> None:
        assert self.feed is not None
        result: Rebuilt | None = None
        try:
            result = await anyio.to_thread.run_sync(
                rebuild,
                replay,
                self.queue.limit,
                anyio.from_thread.check_cancelled,
                self.queue.weight_limit,
            )
        except OSError as exc:
            log.warning(
                "otlp: %s: cannot replay its current run (%s); its spans are not exported",
                safe(replay.path),
                safe_clip(str(exc.strerror or exc), MESSAGE_CHARS),
            )
        except Exception as exc:  # a bug: that run goes unexported, the others do not
            log.error(
                "otlp: replaying %s: %s",
                safe(replay.path),
                safe_clip(f"{type(exc).__name__}: {exc}", MESSAGE_CHARS),
            )
            log.debug("otlp: replaying", exc_info=True)
        if result is not None:
            self.produced += result.dropped  # ended while the run was rebuilt, let go
            self._note(self.health.drop(result.dropped, self.queue.bound))
            if result.builder is None and result.last_step == WHOLE_RUN:
                log.info(
                    "otlp: %s: the start of its current run is no longer in its trace; "
                    "that run's spans are not exported",
                    safe(replay.path),
                )
        self.feed.rebuilt(replay, result)


class _Trouble:
    """One loop's unexpected failures, logged so that flowd goes on: an error line for
    each new one, and only debug lines while the same one repeats (a bad record meets the
    sweep every turn)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._last: str | None = None

    def met(self, exc: Exception, about: str | None = None) -> None:
        what = self.what if about is None else f"{self.what} {safe(about)}"
        message = f"otlp: {what}: {safe_clip(f'{type(exc).__name__}: {exc}', MESSAGE_CHARS)}"
        log.log(logging.DEBUG if message == self._last else logging.ERROR, "%s", message)
        log.debug("otlp: %s", what, exc_info=exc)
        self._last = message

    def over(self) -> None:
        """A turn went well: the next failure is news again."""
        self._last = None
