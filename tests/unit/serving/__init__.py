"""Tests of carecast.serving: the app factory, API v1, health probes."""
