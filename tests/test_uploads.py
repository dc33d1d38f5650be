"""Image uploads: where they decode (one small file on the loop, the rest on the budget's
threads) never changes what they decode to, nor what a bad file is told."""

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service.decode_budget import INLINE_FILE_BYTES, INLINE_IMAGE_BYTES, DecodeBudget
from service.errors import InputError
from service.inputs import image_files
from service.inputs.uploads import NamedFile, images_from_files
from service.settings import Settings
from tests.digits import drawn_one


def decoded_where(files: list[NamedFile]) -> tuple[np.ndarray, list[str]]:
    """The images, and what was handed over to the budget's threads, in order."""
    budget = DecodeBudget(concurrency=1, memory_bytes=64_000_000)
    handed_over: list[str] = []
    run = budget.run

    async def noting(function: Callable[..., Any], *args: Any) -> Any:
        handed_over.append(function.__name__)
        return await run(function, *args)

    budget.run = noting  # type: ignore[method-assign,assignment]
    try:
        images = asyncio.run(images_from_files(files, Settings(), budget))
    finally:
        budget.close()
    return images, handed_over


def test_one_small_file_decodes_on_the_loop_to_what_a_thread_would_make() -> None:
    one = drawn_one(28)
    images, handed_over = decoded_where([("file one.png", one)])
    assert handed_over == []
    expected = image_files.image_from_bytes(one, max_pixels=Settings().max_image_pixels)
    np.testing.assert_array_equal(images[0, :, :, 0], expected)


def test_a_file_with_more_pixels_than_the_loop_may_decode_goes_to_the_threads() -> None:
    side = 200  # 40,000 grey bytes, a PNG of under 2 KB
    assert side * side > INLINE_IMAGE_BYTES
    images, handed_over = decoded_where([("file big.png", drawn_one(side))])
    assert handed_over == ["_decoded_files"]  # its header was read on the loop
    assert images.shape == (1, 28, 28, 1)


def test_a_large_file_is_not_even_opened_on_the_loop() -> None:
    padded = drawn_one() + bytes(INLINE_FILE_BYTES)  # readers stop at the PNG's end
    images, handed_over = decoded_where([("file padded.png", padded)])
    assert handed_over == ["_open_files", "_decoded_files"]
    assert images.shape == (1, 28, 28, 1)


def test_several_small_files_decode_on_the_threads() -> None:
    images, handed_over = decoded_where([("file a", drawn_one()), ("file b", drawn_one())])
    assert handed_over == ["_open_files", "_decoded_files"]
    assert images.shape == (2, 28, 28, 1)


@pytest.mark.parametrize("files", [1, 2], ids=["on the loop", "on the threads"])
def test_a_file_that_is_no_image_is_named_in_the_same_415_wherever_it_is_read(files: int) -> None:
    upload = [("file notes.txt", b"hello, not an image")] + [("file a", drawn_one())] * (files - 1)
    with pytest.raises(InputError) as refused:
        decoded_where(upload)
    assert refused.value.status == 415
    assert refused.value.message.startswith("file notes.txt: not an image format we accept")


def test_the_loop_decode_runs_on_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = image_files.image_from_opened

    def noting(image: Any) -> Any:
        seen.append(threading.get_ident())
        return real(image)

    monkeypatch.setattr(image_files, "image_from_opened", noting)
    decoded_where([("file one.png", drawn_one())])
    assert seen == [threading.get_ident()]
