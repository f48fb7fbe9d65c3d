"""Shared by the manifest tests: the apiVersion line every test document starts with."""

from __future__ import annotations

HEAD = "apiVersion: edgefleet.io/v1\n"
