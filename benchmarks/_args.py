"""argparse value types shared by the benchmark scripts (errors name the flag, what was expected and the value)."""

import argparse


def _integer(text, minimum, what):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text):
    return _integer(text, 1, "a positive integer")


def non_negative_int(text):
    return _integer(text, 0, "an integer >= 0")
