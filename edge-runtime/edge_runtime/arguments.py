"""Argument value types shared by the ``edge-runtime`` commands (``cli``, ``profile_cli``): plain argparse."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from edgefleet.contract.shown import shown


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (the range in the usage error when it is not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a valid integer") from None
        if value < low or (high is not None and value > high):
            span = f"{low}<=x<={high}" if high is not None else f"x>={low}"
            raise argparse.ArgumentTypeError(f"{value} is not in the range {span}")
        return value

    return parse
