"""flowd's OpenTelemetry exporter: every workflow's finished spans to a collector.

The span feed (span_feed.py) turns the records the index reads into finished spans, on
the event loop, and puts them in a bounded queue (span_queue.py). ``Exporter.run`` sends
them in batches (BATCH_SPANS, or what came within BATCH_WAIT of the first), each POSTed
by ``post`` in a worker thread, so neither indexing nor clients ever wait on the
network. A batch that gets no usable answer (no connection, a timeout, 429, 5xx) is kept
and sent again after a backoff (0.5 s doubling to 30 s); one the collector rejects
(another 4xx) is dropped and counted. Runs found mid-way are rebuilt here too, one at a
time, in a worker thread. ``close`` sends what is queued, within a deadline.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from doeff_flow_core.spans import Span
from flowd.errors import OtlpSettingError
from flowd.export_health import Failed, Health, Notice, backoff
from flowd.otlp_endpoint import OPTION, Endpoint, endpoint_from
from flowd.otlp_post import post
from flowd.span_feed import WHOLE_RUN, Rebuilt, Replay, SpanFeed, rebuild
from flowd.span_queue import QUEUE_LIMIT, SpanQueue

log = logging.getLogger("flowd")

BATCH_SPANS: Final = 512
BATCH_WAIT: Final = 1.0
TIMEOUT: Final = 10.0  # for one request
CLOSE_SECONDS: Final = 3.0  # to send what is queued when flowd stops
SWEEP_SECONDS: Final = 2.0  # between looks for runs whose writer is gone


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
        log.error("otlp: %s; not exporting spans", exc)
        return Exporter(None, Health(exc.endpoint, invalid=str(exc)))
    if endpoint is None:
        return None
    source = "" if endpoint.source == OPTION else f" (from {endpoint.source})"
    log.info("otlp: exporting spans to %s%s", endpoint.url, source)
    return Exporter(endpoint, Health(endpoint.url), queue_limit, timeout)


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
        self._failures = 0  # in a row
        self._replays: deque[Replay] = deque()
        self._wake = anyio.Event()  # spans came, or closing
        self._replay_wake = anyio.Event()
        self._closed = anyio.Event()
        self._done = anyio.Event()  # the sender stopped (closing)

    @property
    def queued(self) -> int:
        return len(self.queue) + len(self._batch)

    def stats(self) -> dict[str, Any]:
        """The ``otlp`` object of ``ping`` and ``stats``."""
        return self.health.snapshot(self.queued)

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
        self._note(self.health.drop(self.queue.put(spans), self.queue.limit))
        self._wake.set()

    def _ask_rebuild(self, replay: Replay) -> None:
        self._replays.append(replay)
        self._replay_wake.set()

    def _note(self, notice: Notice | None) -> None:
        if notice is not None:
            log.log(notice.level, "%s", notice.message)

    # -- sending ----------------------------------------------------------------------

    async def _send_loop(self, endpoint: Endpoint) -> None:
        while self._batch or await self._next_batch():
            batch = self._batch
            try:
                outcome = await anyio.to_thread.run_sync(
                    post, endpoint, batch, self.timeout, abandon_on_cancel=True
                )
            except Exception as exc:  # a bug: drop the batch rather than retry it forever
                log.error("otlp: sending %d spans: %s: %s", len(batch), type(exc).__name__, exc)
                log.debug("otlp: sending", exc_info=True)
                self.health.dropped_spans += len(batch)
                self._batch = []
                continue
            self._note(self.health.record(outcome, len(batch)))
            if not isinstance(outcome, Failed):
                self._failures = 0
                self._batch = []
                continue
            if self._closed.is_set():
                return  # stopping: no waiting to retry
            self._failures += 1
            with anyio.move_on_after(backoff(self._failures)):
                await self._closed.wait()

    async def _next_batch(self) -> bool:
        """Take the next batch from the queue once it is full or has waited BATCH_WAIT;
        False when closing with nothing left."""
        while not self.queue:
            if self._closed.is_set():
                return False
            await self._spans_or_closing(None)
        deadline = anyio.current_time() + BATCH_WAIT
        full = min(BATCH_SPANS, self.queue.limit)  # a small queue is not left to overflow
        while len(self.queue) < full and not self._closed.is_set():
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            await self._spans_or_closing(remaining)
        self._batch = self.queue.take(BATCH_SPANS)
        if not self.queue:
            self.health.drained()
        return True

    async def _spans_or_closing(self, timeout: float | None) -> None:
        self._wake = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._wake.wait()

    async def _sweep_loop(self) -> None:
        """A killed writer writes no terminal record: its run's open calls are sent,
        incomplete, once flowd sees it is gone (as ``ps`` says ``lost``)."""
        assert self.feed is not None
        while True:
            await anyio.sleep(SWEEP_SECONDS)
            self.feed.sweep()

    # -- rebuilding runs found mid-way ------------------------------------------------

    async def _rebuild_loop(self) -> None:
        while True:
            while not self._replays:
                self._replay_wake = anyio.Event()
                await self._replay_wake.wait()
            replay = self._replays.popleft()
            try:
                await self._rebuild(replay)
            except Exception as exc:  # a bug: flowd goes on
                log.error("otlp: following %s: %s: %s", replay.path, type(exc).__name__, exc)
                log.debug("otlp: following", exc_info=True)

    async def _rebuild(self, replay: Replay) -> None:
        assert self.feed is not None
        result: Rebuilt | None = None
        try:
            result = await anyio.to_thread.run_sync(
                rebuild, replay, self.queue.limit, anyio.from_thread.check_cancelled
            )
        except OSError as exc:
            log.warning(
                "otlp: %s: cannot replay its current run (%s); its spans are not exported",
                replay.path,
                exc.strerror or exc,
            )
        except Exception as exc:  # a bug: that run goes unexported, the others do not
            log.error("otlp: replaying %s: %s: %s", replay.path, type(exc).__name__, exc)
            log.debug("otlp: replaying", exc_info=True)
        if result is not None:
            self._note(self.health.drop(result.dropped, self.queue.limit))
            if result.builder is None and result.last_step == WHOLE_RUN:
                log.info(
                    "otlp: %s: the start of its current run is no longer in its trace; "
                    "that run's spans are not exported",
                    replay.path,
                )
        self.feed.rebuilt(replay, result)
