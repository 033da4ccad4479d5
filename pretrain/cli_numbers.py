"""Argparse types for the numbers of the tools' command lines: every value is checked finite and in range.

A bad value ends the command before any work with argparse's usage error, which names the flag::

    argument --batch-size: -1 is out of range: expected an integer >= 1

This module is a leaf: it imports nothing of the package.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "finite"


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (either end open when None)."""
    want = f"an integer {_range(lo, hi)}" if (lo is not None or hi is not None) else "an integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer: expected {want}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {want}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in the range (``lo_open``/``hi_open``: that end excluded)."""
    want = f"a finite number {_range(lo, hi, lo_open, hi_open)}" if (lo is not None or hi is not None) \
        else "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: expected {want}") from None
        inside = math.isfinite(value)
        if inside and lo is not None:
            inside = value > lo if lo_open else value >= lo
        if inside and hi is not None:
            inside = value < hi if hi_open else value <= hi
        if not inside:
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {want}")
        return value

    parse.__name__ = "number"
    return parse
