"""Errors the pure core raises and the status reports."""

from __future__ import annotations


class RenderError(ValueError):
    """A child cannot be rendered or written as the spec asks; ``reason`` (CamelCase) and the message go into a
    condition."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)
