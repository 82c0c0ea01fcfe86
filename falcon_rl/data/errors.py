"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file, entry or image is invalid; the message names the file, entry and key."""
