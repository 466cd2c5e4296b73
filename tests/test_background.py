"""A shutdown always ends: background tasks stop even when one cancellation gets lost."""

from __future__ import annotations

import asyncio

import pytest

from micafence.background import stop_task


async def test_a_task_that_loses_a_cancellation_still_stops() -> None:
    lost = 0

    async def reader() -> None:  # like a driver turning a cancel at its read timeout into one
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if lost == 0:
                    lost += 1
                    continue
                raise

    task = asyncio.get_running_loop().create_task(reader())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_task(task), 5)
    assert task.cancelled() and lost == 1


async def test_a_failed_task_is_stopped_without_raising_its_error() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.get_running_loop().create_task(broken())
    await asyncio.sleep(0)
    await stop_task(task)
    await stop_task(None)
    assert isinstance(task.exception(), RuntimeError)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    released = asyncio.Event()

    async def stubborn() -> None:  # ignores cancellation until the test releases it
        while not released.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.get_running_loop().create_task(stubborn())
    stopper = asyncio.get_running_loop().create_task(stop_task(task))
    await asyncio.sleep(0.05)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not task.done()
    released.set()
    await asyncio.wait_for(task, 5)
