"""The decode admission: a cap on decodes at once, and a memory budget that refuses, not waits."""

import asyncio
import threading
import time

import pytest

from service.decode_budget import SMALL_IMAGE_BYTES, SMALL_PER_SLOT, DecodeBudget
from service.errors import InputError

LARGE = SMALL_IMAGE_BYTES + 1  # the smallest image that takes a decode slot


async def test_a_request_that_fits_holds_its_bytes_only_while_it_decodes() -> None:
    budget = DecodeBudget(concurrency=2, memory_bytes=1_000)
    async with budget.admit(600):
        assert budget.admitted_bytes == 600
    assert budget.admitted_bytes == 0


async def test_a_request_beyond_the_budget_gets_503_with_retry_after_at_once() -> None:
    budget = DecodeBudget(concurrency=2, memory_bytes=1_000)
    async with budget.admit(600):
        with pytest.raises(InputError) as refused:
            async with budget.admit(500):
                pytest.fail("admitted over the budget")
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "1"}
    assert "600 of 1,000 bytes" in refused.value.message
    assert budget.admitted_bytes == 0


async def test_one_image_larger_than_the_whole_budget_is_413_since_no_retry_helps() -> None:
    budget = DecodeBudget(concurrency=1, memory_bytes=1_000)
    with pytest.raises(InputError) as refused:
        async with budget.admit(1_001):
            pytest.fail("admitted over the budget")
    assert refused.value.status == 413
    assert "MNIST_DECODE_MEMORY_BYTES" in refused.value.message


async def most_at_once(budget: DecodeBudget, size: int, decodes: int) -> int:
    running, most = 0, 0

    async def decode() -> None:
        nonlocal running, most
        async with budget.admit(size):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(decode() for _ in range(decodes)))
    return most


async def test_no_more_large_decodes_run_at_once_than_the_concurrency() -> None:
    budget = DecodeBudget(concurrency=2, memory_bytes=10 * LARGE)
    assert await most_at_once(budget, LARGE, 6) == 2


async def test_small_images_take_no_decode_slot() -> None:
    # A cropped digit holds little, and one decode a core leaves the cores idle.
    budget = DecodeBudget(concurrency=1, memory_bytes=10 * LARGE)
    assert await most_at_once(budget, SMALL_IMAGE_BYTES, 6) == 6


async def test_a_request_waiting_for_a_slot_already_counts_against_the_budget() -> None:
    budget = DecodeBudget(concurrency=1, memory_bytes=5 * LARGE // 2)
    release = asyncio.Event()

    async def hold(size: int) -> None:
        async with budget.admit(size):
            await release.wait()

    first = asyncio.create_task(hold(LARGE))
    waiting = asyncio.create_task(hold(LARGE))
    await asyncio.sleep(0.01)
    assert budget.admitted_bytes == 2 * LARGE
    with pytest.raises(InputError) as refused:
        async with budget.admit(LARGE):
            pass
    assert refused.value.status == 503
    release.set()
    await asyncio.gather(first, waiting)
    assert budget.admitted_bytes == 0


async def test_a_decode_that_fails_gives_its_bytes_and_slot_back() -> None:
    budget = DecodeBudget(concurrency=1, memory_bytes=1_000)
    with pytest.raises(InputError):
        async with budget.admit(900):
            raise InputError("corrupt", 400)
    async with budget.admit(900):
        assert budget.admitted_bytes == 900


def test_a_budget_of_nothing_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="positive"):
        DecodeBudget(concurrency=0, memory_bytes=1_000)


async def test_work_runs_on_the_budgets_own_threads_and_close_waits_for_it() -> None:
    budget = DecodeBudget(concurrency=2, memory_bytes=1_000)
    names = await asyncio.gather(
        *(budget.run(lambda: threading.current_thread().name) for _ in range(8))
    )
    assert {name.rsplit("_", 1)[0] for name in names} == {"decode"}
    assert len(set(names)) <= 2 * SMALL_PER_SLOT, "a bounded pool"
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.05)
        finished.set()

    running = asyncio.ensure_future(budget.run(slow))
    await asyncio.sleep(0.01)
    budget.close()
    assert finished.is_set(), "close returned while a decode was still running"
    await running
