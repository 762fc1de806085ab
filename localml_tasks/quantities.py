"""Kubernetes resource quantities (`resources.requests/limits` of a Kubernetes deployment), as numbers.

    memory_bytes("512Mi") == 536870912      cpu_cores("500m") == 0.5

A quantity is a decimal number with an optional suffix: binary (Ki Mi Gi Ti Pi Ei, powers of 1024),
decimal (m k M G T P E, powers of 1000; `m` is a thousandth) or an exponent (`1e3`). Kubernetes rounds
a fractional number of bytes up; so do we. Malformed input raises ValueError with a message for people.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

_QUANTITY = re.compile(r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>[KMGTPE]i|[mkMGTPE]|[eE][+-]?\d+)?")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -1, "": 0, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

MEMORY_EXAMPLES = "512Mi, 1Gi, 500M, 2G or a number of bytes"
CPU_EXAMPLES = '"500m" (half a core), "0.5" or "2"'


def quantity(value: str | int | float) -> Decimal:
    """The exact value of a Kubernetes quantity: '1Gi' -> 1073741824, '250m' -> 0.25, 0.5 -> 0.5."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity")
        return Decimal(str(value))
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimal numbers
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number * (Decimal(1000) ** _DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))  # e3, E-2


def memory_bytes(value: str | int | float) -> int:
    """Bytes of a memory quantity, a fraction of a byte rounded up as Kubernetes does: '0.1Gi' -> 107374183."""
    amount = quantity(value)
    if amount < 0:
        raise ValueError(f"{value!r} is negative")
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def cpu_cores(value: str | int | float) -> float:
    """CPU cores of a cpu quantity: '500m' -> 0.5, '2' -> 2.0, 0.5 -> 0.5 (Kubernetes keeps millicores)."""
    amount = quantity(value)
    if amount < 0:
        raise ValueError(f"{value!r} is negative")
    millicores = (amount * 1000).to_integral_value(rounding=ROUND_CEILING)  # Kubernetes' precision for cpu
    return float(millicores / 1000)


def describe_bytes(size: int) -> str:
    """512 MiB, 1.5 GiB, 6 MiB: for messages."""
    for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        scaled = size / 1024**power
        if scaled >= 1:
            return f"{scaled:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} bytes"
