"""A one-shot event that wakes its waiters a cohort at a time.

Rules:
- Setting an :class:`anyio.Event` wakes every waiter in one go: with 10,000 callers waiting
  for the first token, that one call holds the event loop for well over 10 ms. Here the
  waiters queue in cohorts of :data:`COHORT` (in arrival order); :meth:`Broadcast.set`
  wakes the first cohort only, and the first waiter of each cohort to run wakes the next
  one. No single step of the event loop wakes more than a cohort.
- A cohort whose waiters have all left (cancelled) is passed over, so the relay never
  stops short: every waiter still waiting is woken.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

__all__ = ["COHORT", "Broadcast"]

COHORT = 128
"""The most waiters one step of the event loop wakes."""


class Broadcast:
    """Like :class:`anyio.Event` (``set``, ``is_set``, ``wait``), woken in cohorts."""

    __slots__ = ("_cohorts", "_joined", "_live", "_next", "_set")

    def __init__(self) -> None:
        self._cohorts: list[anyio.Event] = []
        self._live: list[int] = []  # waiters still waiting, per cohort
        self._joined = COHORT  # waiters that joined the last cohort: none open yet
        self._next = 0  # the next cohort to wake
        self._set = False

    def is_set(self) -> bool:
        """Whether :meth:`set` was called."""
        return self._set

    def set(self) -> None:
        """Wake every waiter, one cohort per event-loop step. Setting twice is harmless."""
        if not self._set:
            self._set = True
            self._relay()

    async def wait(self) -> None:
        """Wait until :meth:`set` is called (at once, with a checkpoint, if it was)."""
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        if self._joined == COHORT:
            self._cohorts.append(anyio.Event())
            self._live.append(0)
            self._joined = 0
        index = len(self._cohorts) - 1
        self._joined += 1
        self._live[index] += 1
        try:
            await self._cohorts[index].wait()
        finally:
            self._live[index] -= 1
            # The first of a woken cohort to run (woken, or cancelled as it was woken)
            # passes the wake-up on.
            if self._next == index + 1 and self.is_set():
                self._relay()

    def _relay(self) -> None:
        """Wake the next cohort that has a waiter, and every empty one before it."""
        cohorts, live = self._cohorts, self._live
        while self._next < len(cohorts):
            index = self._next
            self._next += 1
            cohorts[index].set()
            if live[index]:
                return
