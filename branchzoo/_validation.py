"""Argument checks shared across branchzoo: errors name the argument and echo it."""

import numbers


def check_int(value, name, minimum=None, maximum=None):
    """Returns `value` as an int, or raises ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}. Received: {name}={value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}. Received: {name}={value}")
    return value


def check_sequence(value, name, expected="be a non-empty list", length=None, allow_empty=False):
    """Returns `value` as a list when it is a sequence (not a string) of the right length.

    The right length is `length` when given, else any, but at least one item
    unless `allow_empty`. Otherwise raises ValueError
    ``"`name` must <expected>. Received: name=value"``.

    Example:

    >>> check_sequence((3, 4), "widths")
    [3, 4]
    >>> check_sequence("ab", "widths", "be a non-empty list of widths")
    Traceback (most recent call last):
    ...
    ValueError: `widths` must be a non-empty list of widths. Received: widths='ab'
    """
    if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__")
            or (len(value) != length if length is not None else not (allow_empty or len(value)))):
        raise ValueError(f"`{name}` must {expected}. Received: {name}={value!r}")
    return list(value)


def check_int_list(value, name, expected="be a non-empty list of integers", minimum=None, length=None,
                   allow_empty=False):
    """`check_sequence`, then `check_int` on every item (named ``name[i]``); returns a list of ints.

    Example:

    >>> check_int_list((2, 2), "blocks_per_stage", minimum=1)
    [2, 2]
    >>> check_int_list((2, 0), "blocks_per_stage", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `blocks_per_stage[1]` must be >= 1. Received: blocks_per_stage[1]=0
    """
    items = check_sequence(value, name, expected, length=length, allow_empty=allow_empty)
    return [check_int(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(items)]
