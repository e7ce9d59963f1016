"""Tests of flowctl: the commands as processes, the shell, the watch, exports."""
