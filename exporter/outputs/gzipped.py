"""gzip for a response made of pieces, reusing the deflated form of unchanged runs.

A scrape's text is mostly what the previous scrape sent: the series renderer and the
comparison engine hand out the same string objects for whatever did not change. Deflating
all of it again (over 100 MB at a thousand experiments) costs more than rendering it, so
a `GzipCache` keeps each run of pieces deflated on its own (ended by a sync flush, so runs
concatenate into one valid deflate stream) with its CRC-32, and recompresses only the runs
holding a piece that is not the same object as before. The runs' CRCs are combined with
the GF(2) arithmetic zlib's crc32_combine uses (Python's zlib does not expose it), so the
answer is one ordinary gzip member any client can read.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

_POLY: Final = 0xEDB88320  # CRC-32, reflected
_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, no mtime, OS unknown
_LAST_BLOCK: Final = b"\x03\x00"  # an empty final fixed-Huffman block


def _multiply(a: int, b: int) -> int:
    """a x b modulo the CRC polynomial (both reflected)."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if not a & (m - 1):
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _powers() -> list[int]:
    """x^(2^k) modulo the polynomial, k = 0..31."""
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multiply(table[-1], table[-1]))
    return table


_X2N: Final = _powers()


def shift_operator(length: int) -> int:
    """x^(8 x length) modulo the polynomial: multiplying a CRC by it appends `length`
    zero bytes, which is what combining a CRC with a following run's needs."""
    product, k = 1 << 31, 3
    while length:
        if length & 1:
            product = _multiply(_X2N[k & 31], product)
        length >>= 1
        k += 1
    return product


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of two byte strings joined, from their CRCs and the second's length."""
    return _multiply(shift_operator(second_length), first) ^ second


@dataclass(frozen=True, slots=True)
class _Run:
    pieces: tuple[str, ...]  # kept so their ids stay theirs while the run is cached
    deflated: bytes
    crc: int
    size: int
    shift: int  # shift_operator(size), worked out once


class GzipCache:
    """Compresses a sequence of str pieces to one gzip member; thread-safe. Holds the
    previous answer's runs: about the compressed size of one response."""

    def __init__(self, run_bytes: int = 64 * 1024, level: int = 1) -> None:
        self._run_bytes, self._level = run_bytes, level
        self._lock = threading.Lock()
        self._runs: dict[int, _Run] = {}  # id of a run's first piece -> the run

    def compress(self, pieces: Sequence[str]) -> bytes:
        pieces = [piece for piece in pieces if piece]
        with self._lock:
            runs = self._runs
            made: list[_Run] = []
            fresh: list[str] = []
            fresh_size = 0
            i, count = 0, len(pieces)
            while i < count:
                run = runs.get(id(pieces[i]))
                if run is not None and _starts(pieces, i, run.pieces):
                    if fresh:
                        made.append(self._deflate(fresh))
                        fresh, fresh_size = [], 0
                    made.append(run)
                    i += len(run.pieces)
                    continue
                fresh.append(pieces[i])
                fresh_size += len(pieces[i])
                if fresh_size >= self._run_bytes:
                    made.append(self._deflate(fresh))
                    fresh, fresh_size = [], 0
                i += 1
            if fresh:
                made.append(self._deflate(fresh))
            self._runs = {id(run.pieces[0]): run for run in made}
        crc, size = 0, 0
        for run in made:
            crc = _multiply(run.shift, crc) ^ run.crc
            size += run.size
        trailer = crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
        return b"".join([_HEADER, *(run.deflated for run in made), _LAST_BLOCK, trailer])

    def _deflate(self, pieces: list[str]) -> _Run:
        data = "".join(pieces).encode()
        deflater = zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return _Run(tuple(pieces), deflated, zlib.crc32(data), len(data), shift_operator(len(data)))


def _starts(pieces: Sequence[str], at: int, run: tuple[str, ...]) -> bool:
    """Whether `pieces` holds exactly the run's objects from `at` on."""
    end = at + len(run)
    if end > len(pieces):
        return False
    return all(a is b for a, b in zip(pieces[at:end], run, strict=True))
