"""The cohort-by-cohort event that wakes a flight's waiters."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from payme_auth._broadcast import COHORT, Broadcast

pytestmark = pytest.mark.anyio


async def _settle() -> None:
    """Let every ready task run (a few passes of the event loop)."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_set_wakes_every_waiter() -> None:
    broadcast = Broadcast()
    woken: list[int] = []

    async def waiter(number: int) -> None:
        await broadcast.wait()
        woken.append(number)

    count = COHORT * 7 + 3
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for number in range(count):
                tg.start_soon(waiter, number)
            await _settle()
            assert woken == []
            assert not broadcast.is_set()
            broadcast.set()
            assert broadcast.is_set()
    assert sorted(woken) == list(range(count))


async def test_set_wakes_one_cohort_and_each_cohort_the_next() -> None:
    broadcast = Broadcast()
    joined: list[int] = []
    woken: list[int] = []
    events_set_when_woken: list[int] = []

    async def waiter(number: int) -> None:
        joined.append(number)  # the order of joining makes the cohorts
        await broadcast.wait()
        woken.append(number)
        events_set_when_woken.append(sum(e.is_set() for e in broadcast._cohorts))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for number in range(COHORT * 4):
                tg.start_soon(waiter, number)
            await _settle()
            broadcast.set()
            # set() itself woke only the first cohort.
            assert [e.is_set() for e in broadcast._cohorts] == [True, False, False, False]
    # Cohorts ran in order: nobody of cohort k ran before somebody of cohort k-1 had.
    cohorts_seen = [joined.index(number) // COHORT for number in woken]
    assert cohorts_seen == sorted(cohorts_seen)
    # Whoever ran saw at most the cohorts up to the next one woken.
    assert max(events_set_when_woken) == 4
    assert events_set_when_woken[0] == 2  # the first to run had just woken cohort 2


async def test_a_cohort_that_left_does_not_stop_the_relay() -> None:
    broadcast = Broadcast()
    woken: list[int] = []

    async def waiter(number: int) -> None:
        await broadcast.wait()
        woken.append(number)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            # Cohorts 0 and 1 wait in scopes cancelled before set(); cohort 2 stays.
            leavers: list[anyio.CancelScope] = []

            async def leaver() -> None:
                with anyio.CancelScope() as scope:
                    leavers.append(scope)
                    await broadcast.wait()

            for _ in range(COHORT * 2):
                tg.start_soon(leaver)
            await _settle()
            for number in range(COHORT):
                tg.start_soon(waiter, number)
            await _settle()
            for scope in leavers:
                scope.cancel()
            await _settle()
            broadcast.set()
    assert sorted(woken) == list(range(COHORT))


async def test_waiters_cancelled_as_they_are_woken_still_pass_it_on() -> None:
    broadcast = Broadcast()
    woken: list[int] = []
    first_cohort: list[anyio.CancelScope] = []

    async def first(number: int) -> None:
        with anyio.CancelScope() as scope:
            first_cohort.append(scope)
            await broadcast.wait()
            woken.append(number)

    async def later(number: int) -> None:
        await broadcast.wait()
        woken.append(number)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for number in range(COHORT):
                tg.start_soon(first, number)
            await _settle()
            for number in range(COHORT, COHORT * 3):
                tg.start_soon(later, number)
            await _settle()
            broadcast.set()
            for scope in first_cohort:  # the whole first cohort is cancelled as it wakes
                scope.cancel()
    assert set(range(COHORT, COHORT * 3)) <= set(woken)


async def test_wait_after_set_returns_at_once_and_set_twice_is_harmless() -> None:
    broadcast = Broadcast()
    broadcast.set()
    broadcast.set()
    with anyio.fail_after(1):
        await broadcast.wait()
        await broadcast.wait()
    assert broadcast.is_set()


async def test_wait_after_set_is_a_checkpoint() -> None:
    broadcast = Broadcast()
    broadcast.set()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await broadcast.wait()
        pytest.fail("a cancelled scope must interrupt wait()")  # pragma: no cover
    assert scope.cancelled_caught


async def test_set_with_nobody_waiting() -> None:
    broadcast = Broadcast()
    broadcast.set()
    assert broadcast.is_set()
    assert broadcast._cohorts == []
