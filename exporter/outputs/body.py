"""The plain /metrics body, in chunks of about a megabyte, from a render's pieces.

At a thousand experiments the body passes 100 MB, most of it the comparison block, which
the comparison engine already holds encoded. Joining everything into one string and
encoding it copied the whole body twice on every scrape (and built two 100 MB objects);
here each piece is encoded at most once (the engine's pieces not at all) and copied once,
into chunks the server writes one after the other.
"""

from __future__ import annotations

from collections.abc import Sequence

CHUNK_BYTES = 1 << 20


def chunks(
    pieces: Sequence[str],
    encoded_parts: tuple[Sequence[str], Sequence[bytes]] = ((), ()),
    size: int = CHUNK_BYTES,
) -> list[bytes]:
    """`pieces` as UTF-8 chunks of about `size` bytes; `encoded_parts` pairs pieces with
    their encoding made beforehand (matched by identity: they are the same objects)."""
    parts, encoded = encoded_parts
    known = dict(zip(map(id, parts), encoded, strict=True))
    out: list[bytes] = []
    group: list[bytes] = []
    held = 0
    for piece in pieces:
        data = known.get(id(piece))
        if data is None:
            data = piece.encode()
        group.append(data)
        held += len(data)
        if held >= size:
            out.append(b"".join(group))
            group, held = [], 0
    if group:
        out.append(b"".join(group))
    return out
