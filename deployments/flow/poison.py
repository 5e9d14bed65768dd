"""Containing inputs that kill replicas: Ray-free policy, unit-tested alone (wired in `caller`).

An image whose bundle died with a replica is retried once, alone. If that retry dies too, the
image is the likely cause: its sha256 goes into a `Quarantine`, and for `ttl_s` the same bytes are
refused at once (422 `poison_image`) instead of killing more replicas. So one input kills at most
two replicas (its bundle's and its solo retry's) before it is refused.

A request that carries many such inputs must not kill two replicas for each: once one of its
retries has died (`Retries.stop`), its remaining replica failures get 503 without a retry.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Quarantine:
    """Content hashes refused until they expire; the oldest go first past `max_entries`."""

    def __init__(
        self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("a quarantine needs a positive ttl_s and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._until: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._until)

    def add(self, digest: str) -> None:
        self._until[digest] = self._clock() + self.ttl_s
        self._until.move_to_end(digest)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def refused_for(self, digest: str) -> float | None:
        """Seconds `digest` stays refused, or None when it is not (or no longer) refused."""
        self._expire()
        until = self._until.get(digest)
        return None if until is None else until - self._clock()

    def _expire(self) -> None:
        # Entries are in insertion order and all share one ttl, so expiry order is the same.
        now = self._clock()
        while self._until:
            digest, until = next(iter(self._until.items()))
            if until > now:
                break
            del self._until[digest]


class Retries:
    """One request's retries after replica failures: each item alone, once, until one dies."""

    def __init__(self) -> None:
        self.stopped = False

    def allow(self) -> bool:
        return not self.stopped

    def stop(self) -> None:
        """A retry died too: the request retries nothing more."""
        self.stopped = True
