"""Idempotency keys: a write repeated with the same key is answered, not applied again.

Clients put an `Idempotency-Key` header on each write and keep it across retries.
The first request that carries a key is applied and its answer remembered with a
fingerprint of the request; a repeat gets that answer back once the first write is
durable. Keys are held by `ABMetrics` under its lock, registered in the same step
as the write they answer, and written in the same commit as its records, so after
a crash either both the records and the key survive or neither does.

A key reused for a different request is refused (422), as Stripe and the IETF
draft do: a client bug that would otherwise silently drop a write.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

HEADER: Final = "Idempotency-Key"
MAX_KEY_LENGTH: Final = 255
# printable ASCII, no spaces: UUIDs, ULIDs, hex and base64 digests all fit
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def key_problem(key: str) -> str | None:
    """Why `key` is not a usable idempotency key (None if it is)."""
    if not _KEY.match(key):
        return f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
    return None


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What a repeat must match: the same method, path and (decoded) body."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer as sent, so that a repeat gets the very same bytes."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class Once:
    """A write's key and fingerprint, checked and registered under the owner's lock."""

    key: str
    fingerprint: str


@dataclass(slots=True)
class Entry:
    fingerprint: str
    answer: Answer
    version: int  # the aggregate version that holds the write: wait for it to be durable
    created: float  # unix time


class KeyReused(ValueError):
    """The key was first used for another request."""


@dataclass(frozen=True, slots=True)
class KeyChanges:
    rows: list[tuple[str, str]]  # (key, entry as JSON)
    gone: list[str]

    def __bool__(self) -> bool:
        return bool(self.rows or self.gone)


@dataclass
class Keys:
    """Recent keys, oldest first; bounded in number and age (not locked: the owner locks)."""

    capacity: int = 100_000
    ttl: float = 24 * 3600.0
    clock: Callable[[], float] = field(default=lambda: 0.0)
    _entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    _changed: set[str] = field(default_factory=set)
    _dropped: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, once: Once) -> Entry | None:
        """The first write's entry for this key, or None; KeyReused if it differs."""
        entry = self._entries.get(once.key)
        if entry is None or entry.created < self.clock() - self.ttl:
            return None
        if entry.fingerprint != once.fingerprint:
            raise KeyReused(
                f"this {HEADER} was already used for a different request; "
                "use a new key for each distinct write"
            )
        return entry

    def remember(self, once: Once, answer: Answer, version: int) -> None:
        now = self.clock()
        self._entries[once.key] = Entry(once.fingerprint, answer, version, now)
        self._entries.move_to_end(once.key)
        self._changed.add(once.key)
        self._dropped.discard(once.key)
        entries = self._entries
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if len(entries) <= self.capacity and oldest.created >= now - self.ttl:
                break
            del entries[oldest_key]
            self._changed.discard(oldest_key)
            self._dropped.add(oldest_key)

    def take_changes(self) -> KeyChanges:
        changed, self._changed = self._changed, set()
        dropped, self._dropped = self._dropped, set()
        rows = [(k, _dump(self._entries[k])) for k in changed if k in self._entries]
        return KeyChanges(rows, sorted(dropped))

    def return_changes(self, changes: KeyChanges) -> None:
        """A write failed: mark them as changed again, for the next one."""
        for key, _ in changes.rows:
            if key in self._entries:
                self._changed.add(key)
        self._dropped.update(k for k in changes.gone if k not in self._entries)

    def load(self, rows: Iterable[tuple[str, str]]) -> None:
        """Restore keys from the data file (already durable: version 0)."""
        loaded = sorted(((k, _load(text)) for k, text in rows), key=lambda kv: kv[1].created)
        for key, entry in loaded:
            self._entries[key] = entry


def _dump(entry: Entry) -> str:
    answer = entry.answer
    return json.dumps(
        [entry.fingerprint, answer.status, answer.body.decode("latin-1"), answer.content_type,
         entry.created]
    )  # fmt: skip


def _load(text: str) -> Entry:
    fp, status, body, content_type, created = json.loads(text)
    if not (isinstance(fp, str) and isinstance(status, int) and isinstance(body, str)):
        raise ValueError("malformed idempotency entry")
    return Entry(fp, Answer(status, body.encode("latin-1"), str(content_type)), 0, float(created))
