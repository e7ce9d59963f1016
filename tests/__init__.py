"""The test suite: ``core/``, ``flowd/``, ``flowctl/``, and ``support/`` (helpers shared
with ``faults/`` and ``bench/``). Imported as the ``tests`` package from the project root."""
