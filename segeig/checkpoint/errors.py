"""The error every part of checkpoint handling raises (its own module, so that the
schema, the file store and the class map share it without importing each other)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit its own description."""
