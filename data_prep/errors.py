"""Exception types raised by data_prep for user-facing problems (bad flags, inputs, outputs)."""

from __future__ import annotations


class DataPrepError(Exception):
    """A problem with the user's inputs, flags or output directory.

    The CLI prints these as ``error: <message>`` without a traceback; the message always names
    the offending file/flag/value and what was expected.
    """


class ManifestError(DataPrepError, ValueError):
    """``manifest.json`` is malformed or does not describe a supported dataset."""
