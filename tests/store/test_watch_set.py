"""WatchSet: a commit wakes exactly the watches whose prefix (and pattern) cover a key."""

from __future__ import annotations

import random
import re

from safething.store.base import Change
from safething.store.feed import FeedWatch, WatchSet


class _Watch(FeedWatch):
    def __init__(self, prefix: str, pattern: str | None = None) -> None:
        match = None if pattern is None else re.compile(pattern + r"\Z").match
        super().__init__(prefix, 0, interval=60.0, match=match)
        self._unread = False
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1
        super().wake()

    def _fetch(self, prefix: str, after: int) -> tuple[list[Change], int]:
        return [], after


def test_a_commit_wakes_the_watches_whose_prefix_or_pattern_covers_a_key() -> None:
    watches = WatchSet()
    everything = _Watch("")
    md = _Watch("md.1.ab.")
    other_md = _Watch("md.1.cd.")
    status = _Watch("md.1.ab.e.", r"md\.1\.ab\.e\.73")  # one entry of md.1.ab
    statuses = _Watch("md.", r"md\.[^.]+\.[^.]+\.e\.73")  # that entry of every MD
    anywhere = _Watch("", r"[^.]+\.s")  # a pattern that starts with a wildcard
    for w in (everything, md, other_md, status, statuses, anywhere):
        watches.add(w)
    assert len(watches) == 6

    watches.wake_for(["md.1.ab.e.61", "md.1.ab.e.62"])  # two readings
    assert [everything.woken, md.woken, other_md.woken] == [1, 1, 0]
    assert [status.woken, statuses.woken, anywhere.woken] == [0, 0, 0]

    watches.wake_for(["md.1.ab.e.61", "md.1.cd.e.73"])  # a reading, another MD's status
    assert [everything.woken, md.woken, other_md.woken] == [2, 2, 1]
    assert [status.woken, statuses.woken, anywhere.woken] == [0, 1, 0]

    watches.wake_for(["md.1.ab.e.73", "x.s"])
    assert [status.woken, statuses.woken, anywhere.woken] == [1, 2, 1]

    watches.discard(status)
    watches.discard(statuses)
    watches.wake_for(["md.1.ab.e.73"])
    assert [status.woken, statuses.woken] == [1, 2]
    assert len(watches) == 4
    assert set(watches) == {everything, md, other_md, anywhere}


def _dot_prefixes(key: str) -> set[str]:
    """``""`` and every prefix of ``key`` that ends with a ``.``."""
    return {""} | {key[: i + 1] for i, c in enumerate(key) if c == "."}


def test_wakes_as_a_walk_over_every_dot_prefix_of_each_key() -> None:
    """The watches woken, and how often, are those of a walk over every ``.``-prefix of
    each written key (what wake_for did before it looked only at the lengths of the
    watches' prefixes), as watches come and go; prefixes not ending in ``.`` included."""
    rng = random.Random(1404)
    parts = ["md", "1", "ab", "e", "73", "a.b", ""]
    prefixes = ["", "md.", "md.1.", "md.1.ab.", "md.1.ab.e.", "md", "md.1", "x.", "md.1.ab.e.73"]
    patterns = [None, None, r"md\.[^.]+\.[^.]+\.e\.73", r"[^.]+\.s", r"md\..*"]
    watches = WatchSet()
    live: list[_Watch] = []
    for _round in range(300):
        if live and rng.random() < 0.3:
            gone = live.pop(rng.randrange(len(live)))
            watches.discard(gone)
            watches.discard(gone)  # twice: no effect
        else:
            w = _Watch(rng.choice(prefixes), rng.choice(patterns))
            watches.add(w)
            watches.add(w)  # twice: no effect
            live.append(w)
        keys = [
            ".".join(rng.choice(parts) for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(1, 5))
        ]
        before = {w: w.woken for w in live}
        watches.wake_for(keys)
        for w in live:
            covered = [k for k in keys if w._prefix in _dot_prefixes(k)]
            if w._match is None:
                expected = 1 if covered else 0
            else:
                expected = sum(1 for k in covered if w._match(k))
            assert w.woken - before[w] == expected, (w._prefix, keys)
        assert len(watches) == len(live)
