"""A flood of subscriptions against a running flowd: ``requests`` ``watch`` requests for
ids nobody writes, pipelined on one connection, then ``connections`` connections held
open together, each sending one more watch than a connection may hold; then every one of
them leaves. Meanwhile a well-behaved client pings and flowd's RSS is sampled.

flowd must refuse every watch past its limits (MAX_WATCHES a connection, MAX_WATCHES_TOTAL
in all), answer the pings throughout, and, once the flood has left, be back within 10% of
its resident memory before it (a served flowd's: one ``ps`` and one watch first)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from common import Flowd, rss_kib, tempdir
from hostile import Watchdog

from doeff_flow_core.protocol import MAX_WATCHES, MAX_WATCHES_TOTAL
from tests.support.flood import Flood, flood, warm_up
from tests.support.procs import wait_until

RSS_MARGIN = 0.10  # after leaving, at most this much above before
SETTLE_SECONDS = 11.0  # for the memory to come back (a client's stall timer: 10 s)


@dataclass
class Figures:
    requests: int = 0
    connections: int = 0
    accepted: int = 0
    refused_connection: int = 0
    refused_flowd: int = 0
    other_answers: int = 0
    before_kib: int = 0
    after_kib: int = 0
    peak_rss_kib: int = 0
    pings: int = 0
    unanswered: int = 0
    worst_ping: float = 0.0
    flowd_died: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def refused(self) -> int:
        return self.refused_connection + self.refused_flowd

    @property
    def growth(self) -> float:
        return self.after_kib / self.before_kib - 1 if self.before_kib else 0.0

    def line(self) -> str:
        return (
            f"flood: {self.requests} watch requests over {self.connections} connections, "
            f"{self.accepted} accepted, {self.refused} refused over the caps "
            f"({self.refused_connection} a connection's, {self.refused_flowd} flowd's), "
            f"peak RSS {self.peak_rss_kib / 1024:.0f} MB, RSS after leaving "
            f"{self.after_kib / 1024:.1f} MB vs {self.before_kib / 1024:.1f} MB before "
            f"({self.growth * 100:+.1f}%, bound {RSS_MARGIN * 100:.0f}%), worst ping "
            f"{self.worst_ping * 1000:.0f} ms, {self.unanswered}/{self.pings} pings "
            f"unanswered, flowd {'DIED' if self.flowd_died else 'alive'}"
        )

    def ok(self) -> bool:
        return (
            not (self.problems or self.unanswered or self.flowd_died or self.other_answers)
            and self.pings > 0
            and self.after_kib <= self.before_kib * (1 + RSS_MARGIN)
        )


def _count(fig: Figures, floods: list[Flood]) -> None:
    for each in floods:
        fig.requests += each.sent
        fig.connections += 1
        fig.accepted += each.accepted
        fig.refused_connection += each.refused.get("connection", 0)
        fig.refused_flowd += each.refused.get("flowd", 0)
        fig.other_answers += len(each.other)
        if each.answered < each.sent:
            fig.problems.append(f"{each.sent - each.answered} watches never answered")
        fig.problems += [f"unexpected answer: {str(m)[:200]}" for m in each.other[:3]]


def _check(fig: Figures) -> None:
    """The caps, as documented: every connection up to its own, all up to flowd's."""
    if fig.accepted != min(MAX_WATCHES_TOTAL, MAX_WATCHES * fig.connections):
        fig.problems.append(f"{fig.accepted} watches accepted, not what the caps allow")
    if fig.accepted + fig.refused != fig.requests:
        fig.problems.append(f"{fig.requests} requests, {fig.accepted + fig.refused} answered")


def run(requests: int, connections: int, seed: int = 0) -> Figures:
    """``seed`` is unused: the flood is the same every time (the table's signature)."""
    fig = Figures()
    root = tempdir("fl")  # an empty root: every id watched is unknown
    daemon = Flowd([root])
    floods: list[Flood] = []
    try:
        warm_up(daemon.socket, connections + 2)  # as many at once as the flood and the pinger
        fig.before_kib = rss_kib(daemon.pid)
        with Watchdog(daemon, fig):  # type: ignore[arg-type]  # fills the same figures
            floods.append(flood(daemon.socket, requests, "one"))
            for n in range(connections):
                floods.append(flood(daemon.socket, MAX_WATCHES + 1, f"c{n}"))
            for each in floods:
                each.leave()
            floods_left = floods
            floods = []
        # the pinging client leaves too; the flood's timers lapse (a client's stall
        # timeout): then flowd is as it was before, or as near as it gets
        wait_until(lambda: rss_kib(daemon.pid) <= fig.before_kib * 1.02, SETTLE_SECONDS, 0.2)
        fig.after_kib = rss_kib(daemon.pid)
        _count(fig, floods_left)
        _check(fig)
        if not daemon.alive():
            fig.flowd_died = True
        log = daemon.log()
        errors = [line for line in log.splitlines() if " flowd ERROR " in line]
        errors += ["a traceback"] * log.count("Traceback (most recent call last)")
        fig.problems += [f"flowd logged: {line}" for line in errors[:5]]
    finally:
        for each in floods:
            each.leave()
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    return fig
