"""Argument validators shared by the layers, losses, networks and entry points.

Pure Python (plus `numbers`): no TensorFlow import, so configs and command-line code can use
them cheaply. Each checker returns the value in a canonical Python type and raises with the house
message: what was expected, then `Received: name=value`.

    >>> check_int("int_steps", 7, minimum=0)
    7
    >>> check_int("int_steps", True, minimum=0)
    Traceback (most recent call last):
        ...
    ValueError: `int_steps` must be an int >= 0. Received: int_steps=True

`bool` is a subclass of `int` in Python, and `True` for a count or a size is almost always a
mistake (a flag passed in the wrong position), so the integer and number checks reject it.
"""

import math
import numbers

__all__ = ["check_bool", "check_choice", "check_int", "check_positive", "is_int"]


def is_int(value):
    """True for an integer (Python or NumPy) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum=None, *, optional=False, hint=None):
    """Returns `value` as an `int`, or raises `ValueError` unless it is an int `>= minimum`.

    Args:
        name: the argument's name, for the message.
        value: the argument. Python and NumPy integers are accepted; bools, floats (even
            integral ones such as `4.0`) and strings are not.
        minimum: the smallest accepted value, or None for no bound.
        optional: also accept None (returned as None).
        hint: text added to the message in parentheses, saying what the value means.

    Raises:
        ValueError: `value` is not an int, or is below `minimum`. (A `ValueError` for the type as
            well, so that one `except ValueError` catches every bad value of the argument.)
    """
    if optional and value is None:
        return None
    if not is_int(value) or (minimum is not None and value < minimum):
        expected = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(_message(name, value, expected, optional, hint))
    return int(value)


def check_bool(name, value, *, hint=None):
    """Returns `value`, or raises `TypeError` unless it is `True` or `False`.

    Raises:
        TypeError: `value` is not a bool (ints, strings such as `"no"` and None included).
    """
    if not isinstance(value, bool):
        raise TypeError(_message(name, value, "True or False", False, hint))
    return value


def check_positive(name, value, *, unit=None, optional=False, hint=None):
    """Returns `value` as a `float`, or raises `ValueError` unless it is a real number > 0.

    Args:
        name: the argument's name, for the message.
        value: the argument: a Python or NumPy int or float; not a bool, NaN or infinity.
        unit: what the number counts, for the message ("a positive number of bytes").
        optional: also accept None (returned as None).
        hint: text added to the message in parentheses, saying what the value means.

    Raises:
        ValueError: `value` is not a finite real number > 0.
    """
    if optional and value is None:
        return None
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    # `not value > 0` also rejects NaN; ints are finite (and may be too large for a float).
    if not (real and value > 0 and (is_int(value) or math.isfinite(value))):
        expected = "a positive number" if unit is None else f"a positive number of {unit}"
        raise ValueError(_message(name, value, expected, optional, hint))
    return float(value)


def check_choice(name, value, choices):
    """`value` if it is one of `choices`, else a ValueError in the house message."""
    if value not in choices:
        raise ValueError(_message(name, value, f"one of {tuple(choices)}", False, None))
    return value


def _message(name, value, expected, optional, hint):
    """The house message: `name` must be [None or ]expected[ (hint)]. Received: name=value."""
    expected = f"None or {expected}" if optional else expected
    hint = f" ({hint})" if hint else ""
    return f"`{name}` must be {expected}{hint}. Received: {name}={value!r}"
