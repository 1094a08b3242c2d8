"""The one integer check of the package: configs, model options, loaders, environment, CLI."""

from __future__ import annotations

import numbers


def _bound(n: int) -> str:
    # 2**63 - 1 reads better than 9223372036854775807 in a one-line error.
    return f"2**{(n + 1).bit_length() - 1} - 1" if n >= 2**32 and (n + 1) & n == 0 else str(n)


def int_range(low: int | None = None, high: int | None = None) -> str:
    """The allowed values in words: "an integer >= 1", "an integer in [0, 30]"."""
    if low is not None and high is not None:
        return f"an integer in [{_bound(low)}, {_bound(high)}]"
    if low is not None:
        return f"an integer >= {low}"
    return "an integer" if high is None else f"an integer <= {_bound(high)}"


def check_int(name: str, value, low: int | None = None, high: int | None = None, *,
              text: bool = False) -> int:
    """``value`` as an int in ``[low, high]`` (None: unbounded), else a one-line ValueError.

    Bools are refused (``True`` is not a depth) and so are floats, even whole ones. With
    ``text`` a string (an environment variable, say) is read as a base-10 integer first.
    """
    number = value
    if text and isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    ok = isinstance(number, numbers.Integral) and not isinstance(number, bool)
    if ok and (low is None or number >= low) and (high is None or number <= high):
        return int(number)
    raise ValueError(f"{name}: {value!r} is not allowed; allowed: {int_range(low, high)}")
