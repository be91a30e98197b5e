"""The bulk float formatting writes exactly what repr() does."""

from __future__ import annotations

import numpy as np

from exporter.outputs.floats import reprs


def test_every_kind_of_float_is_written_as_repr_writes_it() -> None:
    rng = np.random.default_rng(7)
    sign = rng.choice([-1.0, 1.0], 200_000)
    values = np.concatenate([
        np.exp(rng.uniform(np.log(1e-320), np.log(1e300), 200_000)) * sign,  # every notation
        np.exp(rng.uniform(np.log(1e-5), np.log(1e16), 200_000)) * sign,  # around the edges
        rng.integers(0, 2**63, 100_000, dtype=np.uint64).view(np.float64),  # any bit pattern
        rng.integers(1, 1000, 50_000) / rng.integers(1, 1000, 50_000),
        np.round(rng.uniform(-1e6, 1e6, 50_000), 2),
        [0.0, -0.0, 1e-4, np.nextafter(1e-4, 0), 1e15, np.nextafter(1e15, 0), 1e16, 5e-324,
         np.nan, np.inf, -np.inf, 0.1 + 0.2, 1.7976931348623157e308, 1e-05, 123456.0],
    ])  # fmt: skip
    assert reprs(values) == [repr(v) for v in values.tolist()]


def test_ints_and_nothing() -> None:
    assert reprs(np.array([-1, 0, 1, 2**40])) == ["-1", "0", "1", str(2**40)]
    assert reprs(np.array([], dtype=float)) == []
