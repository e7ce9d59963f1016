"""doeff_flow_core: live effect traces of doeff workflows, as JSON Lines.

Dependency rule: this package imports only the standard library at import time.
The tracing entry points (``run_workflow``, ``trace_observer``) import ``doeff``
when they are called, so a worker can embed the package with no other dependency.
"""

from doeff_flow_core.errors import (
    BadTraceSetting,
    InvalidWorkflowId,
    MalformedRecord,
    TraceDirUnwritable,
    WorkflowBusy,
    WorkflowFailed,
)
from doeff_flow_core.ids import validate_workflow_id
from doeff_flow_core.liveness import effective_status
from doeff_flow_core.locations import default_socket_path
from doeff_flow_core.records import LiveTrace, SlogLine, TraceFrame, parse_record
from doeff_flow_core.timeline.profile import Entry, NoRun, Profile, profile_of, profiles_of
from doeff_flow_core.timeline.spans import Span, spans_of
from doeff_flow_core.tracefiles.layout import default_trace_dir, trace_file, workflow_dir
from doeff_flow_core.tracefiles.reading import (
    Tail,
    follow,
    read_from,
    read_history,
    read_last,
    read_latest,
)
from doeff_flow_core.tracefiles.scan import WorkflowSummary, scan_workflows
from doeff_flow_core.tracing import TraceObserver, trace_observer
from doeff_flow_core.transform import traced
from doeff_flow_core.workflow import WorkflowResult, run_workflow

__all__ = [
    "BadTraceSetting",
    "Entry",
    "InvalidWorkflowId",
    "LiveTrace",
    "MalformedRecord",
    "NoRun",
    "Profile",
    "SlogLine",
    "Span",
    "Tail",
    "TraceDirUnwritable",
    "TraceFrame",
    "TraceObserver",
    "WorkflowBusy",
    "WorkflowFailed",
    "WorkflowResult",
    "WorkflowSummary",
    "default_socket_path",
    "default_trace_dir",
    "effective_status",
    "follow",
    "parse_record",
    "profile_of",
    "profiles_of",
    "read_from",
    "read_history",
    "read_last",
    "read_latest",
    "run_workflow",
    "scan_workflows",
    "spans_of",
    "trace_file",
    "trace_observer",
    "traced",
    "validate_workflow_id",
    "workflow_dir",
]
