"""The command-line edge every entry point shares: a bad argument is one line on stderr.

That line starts with ``error:``, names the flag, says what it got and what it expects, and the
command exits with status 2 before any work starts. Argparse's own errors (an unknown flag, a
bad choice, a value its ``type=`` refuses) take the same one-line form, without the usage.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import NoReturn

SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A sweep name: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100
characters and no '..': it names one folder inside --storage (locally and in a bucket) and a
job id."""


def valid_sweep_name(name: str) -> bool:
    return bool(SWEEP_NAME.fullmatch(name)) and ".." not in name


def error(message: str) -> int:
    """Print ``error: message`` as one line on stderr (a multi-line message joined); return 2."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr)
    return 2


def fail(message: str) -> NoReturn:
    """:func:`error`, then exit with status 2."""
    raise SystemExit(error(message))


class _Parser(argparse.ArgumentParser):
    # argparse documents overriding error() as the way to change how it reports a bad argument;
    # its sub-commands' parsers are made of the same class.
    def error(self, message: str) -> NoReturn:
        fail(message)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        # Python 3.11's argparse drops the value of `--flag=--` and hands on [] without calling
        # the flag's type; refuse it here instead of letting [] through.
        if arg_strings == ["--"] and action.option_strings and action.nargs is None:
            self.error(f"argument {'/'.join(action.option_strings)}: got '--', expected a value")
        return super()._get_values(action, arg_strings)


def parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser whose errors are one ``error:`` line on stderr and exit status 2."""
    return _Parser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number from ``low`` (to ``high``)."""
    expected = f"a whole number >= {low}" if high is None else f"a whole number {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}")
        return value

    return parse


def number(low: float, *, inclusive: bool) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number above ``low`` (or equal to it when inclusive)."""
    expected = f"a finite number {'>=' if inclusive else '>'} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}")
        return value

    return parse


positive_int = integer(1)
non_negative_int = integer(0)
seed = integer(0, 2**32 - 1)
"""A random seed: numpy, torch and espeak-ng all take one of 32 bits."""
positive_float = number(0.0, inclusive=False)
non_negative_float = number(0.0, inclusive=True)


def labels_per_class(text: str) -> int | str:
    """An argparse ``type=``: labelled samples per class, a whole number >= 1, or 'all'."""
    if text == "all":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected a whole number >= 1 or 'all'"
        ) from None


def unlabelled(text: str) -> int | str:
    """An ``type=`` for --unlabelled: a whole number of pool rows (0: none) or 'all'."""
    if text == "all":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected a whole number of pool rows, 'all' or 0"
        )
    return int(text)
