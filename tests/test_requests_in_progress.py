"""Whether a request is alone: the only HTTP request uvicorn's server has in progress."""

import asyncio

from service.requests_in_progress import RequestsInProgress


async def test_a_request_is_alone_only_as_the_one_task_in_progress() -> None:
    in_progress = RequestsInProgress()
    assert not in_progress.alone()  # nothing shown yet: unknown, so never alone
    tasks: set[asyncio.Task[bool]] = set()
    in_progress.watch(tasks)

    async def request() -> bool:
        return in_progress.alone()

    first = asyncio.create_task(request())
    tasks.add(first)
    assert await first
    second, third = asyncio.create_task(request()), asyncio.create_task(request())
    tasks.update({second, third})
    assert list(await asyncio.gather(second, third)) == [False, False]
    tasks.clear()
    tasks.add(first)
    # Another task than the one in progress, as a gRPC call is.
    assert not await asyncio.create_task(request())
