"""repr() of many floats at once, for the exposition's long columns.

Python's repr of a float costs about a microsecond, and the comparison block has
half a million of them. orjson (already a dependency) writes the same shortest
round-trip digits some thirty times faster; its notation differs from repr's only
outside [1e-4, 1e15) (exponents: `1e-05` against `0.00001`, `1e+16` ...), and for
NaN and infinities (`null`). Those values, rare in practice, go through repr
itself, so the text is byte for byte what repr gives (tests/test_floats.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

LOW, HIGH = 1e-4, 1e15  # where orjson's notation is repr's


def reprs(values: npt.NDArray[Any]) -> list[str]:
    """`[repr(v) for v in values.tolist()]`, for a 1-d array of floats or ints."""
    if not len(values):
        return []
    values = np.ascontiguousarray(values)
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    out = text[1:-1].split(",")
    if values.dtype.kind == "f":
        size = np.abs(values)
        plain = ((size >= LOW) & (size < HIGH)) | (values == 0)  # False for NaN
        for i in np.flatnonzero(~plain).tolist():
            out[i] = repr(float(values[i]))
    return out
