"""Pending in-process records packed into columns equal the values, one pass each."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import pytest

from exporter.core import tables
from exporter.core.aggregate import FEW
from exporter.core.limits import Limits
from exporter.core.tables import Table
from exporter.state import pending


def _records(count: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    flat: list[Any] = []
    for i in range(count):
        latency = rng.choice([rng.uniform(0, 3.6e6), rng.randrange(3_600_000), 0, 0.1 + 0.2])
        when = rng.choice([1.7e9 + rng.random(), 2**53 + 1, 0.0])  # an int past float's digits
        flat.extend((float((rng.randrange(1, 2**29) << 24) | i), latency, rng.random() < 0.5, when))
    return flat


@pytest.mark.parametrize("count", [FEW + 1, 255, 256, 257, 1000, 4096, 4097])
def test_packed_columns_equal_one_pass_per_column(count: int) -> None:
    """Across the chunk edges: the codes as float64, an int latency or time as the float
    float() makes of it, successes as bools."""
    flat = _records(count, count)
    table = pending.QUERIES.table(flat, len(flat))
    names = table.dtype.names
    assert names is not None
    expected = [
        np.fromiter(flat[0::4], np.float64, count),
        np.fromiter(flat[1::4], np.float64, count),
        np.array(flat[2::4], dtype=np.bool_),
        np.fromiter(flat[3::4], np.float64, count),
    ]
    for name, column in zip(names, expected, strict=True):
        assert table[name].tobytes() == column.tobytes(), name


def test_drain_keeps_the_records_appended_after_its_length_was_read() -> None:
    """Records that come while a fold reads are left for the next one, and a record
    whose series is gone is dropped."""
    table: Table[Any] = Table({"n": (np.int64, 0.0, ())})
    codes = [table.code(table.row(("e", f"b{i}"))) for i in range(3)]
    flat: list[Any] = []
    for i in range(300):
        flat.extend((codes[i % 3], float(i), True, 1.0))
    table.remove(("e", "b2"))  # a third of the records now name a series that is gone
    rows, columns = pending.drain(table, flat, pending.QUERIES)
    assert flat == []
    assert len(rows) == 200 and set(rows.tolist()) == {0, 1}
    assert columns[0].tolist() == [float(i) for i in range(300) if i % 3 != 2]


def test_the_largest_code_survives_the_float_and_the_packing_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A code is the serial above the row's 24 bits: the last serial above the last row
    takes all 53 bits of a float's significand; a series at the last serial packs and
    unpacks to its own row."""
    assert (tables._SERIAL_CYCLE << 24 | tables.MAX_ROWS - 1) == 2**53 - 1  # exact as a float
    monkeypatch.setattr(tables, "_serials", itertools.count(tables._SERIAL_CYCLE - 2))
    table: Table[Any] = Table({"n": (np.int64, 0.0, ())})
    table.row(("e", "a"))  # the serial before the last
    row = table.row(("e", "b"))
    code = table.code(row)
    assert int(code) == (tables._SERIAL_CYCLE << 24 | row) and code == float(int(code))
    flat: list[Any] = [code, 1.0, True, 2.0] * (FEW + 1)
    rows, columns = pending.drain(table, flat, pending.QUERIES)
    assert rows.tolist() == [row] * (FEW + 1) and columns[0].tolist() == [1.0] * (FEW + 1)


def test_a_table_refuses_a_row_past_what_a_code_can_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tables, "MAX_ROWS", 3)
    table: Table[Any] = Table({"n": (np.int64, 0.0, ())})
    for i in range(3):
        table.row(("e", f"b{i}"))
    with pytest.raises(OverflowError):
        table.row(("e", "b3"))
    assert len(table) == 3 and table.row(("e", "b1")) == 1
    with pytest.raises(ValueError, match="max_series"):
        Limits(max_series=2**24 + 1)
