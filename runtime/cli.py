"""The edge of every command: one sentence instead of a traceback, and option types.

Each `python -m ...` entry point runs its `main` through `run`: an `InputError` from any
stage (or an OS error on a path the user gave) becomes `error: ...` and exit status 2,
Ctrl-C becomes one line and 130, a crash in native code prints the Python stack it came
from, and a reader that closes the pipe (`... | head`) ends the command quietly. A failed
check (a gate) is the command's own exit status 1.
Option types reject out-of-range numbers at parse time, before any work starts.
"""
from __future__ import annotations

import argparse
import faulthandler
import math
import os
import signal
import sys
from typing import Callable, Optional, Sequence

from runtime.errors import InputError

Main = Callable[[Optional[Sequence[str]]], int]


def say(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def _os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}; check the path and its permissions."


def run(main: Main, argv: Sequence[str] | None = None) -> int:
    """`main(argv)`'s exit status, with every expected failure as one clear line."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 still prints
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up as Ctrl-C does
    _report_crashes()
    try:
        return main(argv)
    except InputError as error:
        say(str(error))
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): stop, and say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        say(_os_error(error))
        return 2
    except KeyboardInterrupt:
        say("interrupted; outputs land all at once, so none was left half-written.")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_crashes() -> None:
    """A crash inside native code (TensorFlow, LiteRT) prints the Python stack it came
    from, so a report of one says where; unless stderr is no file (captured in-process)."""
    try:
        faulthandler.enable()
    except (AttributeError, ValueError):  # io.UnsupportedOperation is a ValueError
        pass


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""
    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the smallest allowed, {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (or (low, high] if low_open)."""
    def parse(text: str) -> float:
        value = _number(float, text)
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{value} is outside {bracket}{low}, {high}]")
        return value
    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
# slim accepts any positive depth multiplier; past 4 the model no longer fits a device.
DEPTH_MULTIPLIER = float_in(0.0, 4.0, low_open=True)
