"""Fixtures of the flowd tests (helpers are in ``tests.support``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.otlp import Collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()
