"""flowd: the optional doeff-flow daemon.

Dependency rule: flowd may import doeff_flow_core and anyio, never flowctl.
"""
