"""Tests of flowd: a real daemon on a real socket, and its parts without one."""
