"""Discretisation of numeric columns into categorical tokens."""
from __future__ import annotations

import math

MISSING = "<missing>"


def log2_bucket(value: float) -> str:
    """The Criteo-competition discretisation: floor(ln(v)^2) for v > 2, v itself otherwise.

    Large counts share buckets whose width grows with the value, so a heavy-tailed
    count becomes a small categorical vocabulary.
    """
    if value > 2:
        return f"b{int(math.log(value) ** 2)}"
    return f"v{int(value)}" if float(value).is_integer() else f"v{value:g}"


def parse_numeric_token(text: str) -> str:
    """A numeric cell as its bucket token; empty means missing. Raises ValueError on junk."""
    text = text.strip()
    if not text:
        return MISSING
    value = float(text)
    if math.isnan(value):
        return MISSING
    return log2_bucket(value)
