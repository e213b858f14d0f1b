"""Parsing memory budgets: bytes with a unit, or a fraction of the full table."""
from __future__ import annotations

import math
import re

from embslim.errors import ConfigError

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_budget(text: str, full_bytes: int) -> int:
    """'0.2' -> 20% of full_bytes; '150000', '512KiB', '1.5MB' -> bytes. Always an int number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise ConfigError(f"cannot read budget {text!r}: give a fraction like 0.2 or bytes like 150000, 512KiB, 1.5MB")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit == "" and 0 < value <= 1:
        return int(value * full_bytes)
    if value <= 0 or not math.isfinite(value):
        raise ConfigError(f"budget must be positive and finite, got {text!r}")
    return int(value * UNITS[unit])
