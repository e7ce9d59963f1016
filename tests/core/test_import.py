"""doeff_flow_core imports with the standard library alone: doeff, anyio, prompt_toolkit blocked."""

from __future__ import annotations

import json

from tests.support.procs import run_python

BLOCKING_FINDER = """
import importlib.abc, json, sys

BLOCKED = {"doeff", "doeff_vm", "doeff_core_effects", "anyio", "prompt_toolkit"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked by the test: {fullname}")
        return None

sys.meta_path.insert(0, Block())
"""


def test_finder_really_blocks_doeff() -> None:
    # The check below only means something if the finder stops these imports.
    code = BLOCKING_FINDER + "\nimport doeff\n"
    proc = run_python(code)
    assert proc.returncode != 0
    assert "blocked by the test: doeff" in proc.stderr


def test_core_imports_with_only_the_standard_library() -> None:
    code = (
        BLOCKING_FINDER
        + """
import doeff_flow_core
from doeff_flow_core import (
    LiveTrace, TraceFrame, parse_record, read_last, run_workflow, trace_observer,
    validate_workflow_id,
)
names = ["run_workflow", "trace_observer", "TraceFrame", "LiveTrace", "validate_workflow_id",
         "read_last", "read_latest", "read_from", "follow", "scan_workflows", "effective_status"]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({
    "missing": [n for n in names if not hasattr(doeff_flow_core, n)],
    "callable": callable(run_workflow) and callable(trace_observer),
    "loaded": loaded,
    "id": validate_workflow_id("wf-001"),
}))
"""
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report == {"missing": [], "callable": True, "loaded": [], "id": "wf-001"}


def test_every_core_module_imports_without_doeff() -> None:
    code = (
        BLOCKING_FINDER
        + """
import importlib, pkgutil
import doeff_flow_core
prefix = "doeff_flow_core."
mods = [m.name for m in pkgutil.walk_packages(doeff_flow_core.__path__, prefix)]
for name in mods:
    importlib.import_module(name)
print(json.dumps([name.removeprefix(prefix) for name in mods]))
"""
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)
    assert {
        "records",
        "tracefiles.reading",
        "tracefiles.writing",
        "tracing",
        "workflow",
        "timeline.spans",
    } <= set(modules)
