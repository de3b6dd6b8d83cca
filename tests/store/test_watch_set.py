"""WatchSet: a commit wakes exactly the watches whose prefix (and pattern) cover a key."""

from __future__ import annotations

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
