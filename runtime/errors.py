"""The one error type every stage raises for input it cannot use.

Each stage names its own subclass (a model that will not load, an image that will not
decode, a data folder, weights), but all are `InputError`, so each command's edge
(`runtime.cli.run`) turns any of them into one sentence and exit status 2 without
listing them. The message names the input and says what to do.
"""
from __future__ import annotations


class InputError(ValueError):
    """Something the user gave cannot be used; the message names it and the fix."""
