"""Tests of doeff_flow_core: the tracer, records, trace files, timelines."""
