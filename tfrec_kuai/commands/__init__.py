"""Sub-commands of the tfrec-kuai CLI (see tfrec_kuai.cli), and the flag types they share.

The types refuse a value at parse time, so ``--epochs 0`` or ``--learning_rate -1`` gets argparse's
one-line error and exit status 2 before anything is read or written.
"""
import argparse
import math


def _number(cast, minimum, strict, what):
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


positive_int = _number(int, 0, True, "an integer >= 1")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a number > 0")
