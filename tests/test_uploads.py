"""Image uploads: multipart forms read as they stream in, within their limits; and where
files decode (one small file on the loop, the rest on the budget's threads) never changes
what they decode to, nor what a bad file is told."""

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request

from service.decode_budget import DecodeBudget
from service.errors import InputError
from service.inputs import image_files
from service.inputs.uploads import (
    INLINE_FILE_BYTES,
    INLINE_IMAGE_BYTES,
    MAX_OTHER_PARTS,
    NamedFile,
    files_from_form,
    images_from_files,
)
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


BOUNDARY = "uploads-test-boundary"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body of (field name, filename or None for a text field, data) parts."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def read_form(
    body: bytes,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    chunk: int = 7,
    max_images: int = 4,
) -> list[NamedFile]:
    """``files_from_form`` on ``body``, arriving ``chunk`` bytes at a time."""
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> dict[str, Any]:
        data = chunks.pop(0)
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", content_type.encode())],
        "query_string": b"",
    }
    settings = Settings(max_images_per_request=max_images)
    return asyncio.run(files_from_form(Request(scope, receive), settings))


def test_file_parts_come_whole_and_in_order_however_the_body_is_cut() -> None:
    tricky = b"\r\n--" + BOUNDARY.encode()[:-1] + b"\x00\xff\r\n"  # nearly a boundary
    body = form(("file", "a.png", tricky), ("note", None, b"ignored"), ("file", "", b"second"))
    for chunk in (1, 7, 64, len(body)):
        assert read_form(body, chunk=chunk) == [("file a.png", tricky), ("file #2", b"second")]


def test_a_text_field_named_file_is_refused_with_its_place() -> None:
    with pytest.raises(InputError) as refused:
        read_form(form(("file", "a.png", b"x"), ("file", None, b"text")))
    assert (refused.value.status, refused.value.message) == (
        422,
        "field 'file' #2 is text, not a file upload",
    )


def test_one_file_more_than_allowed_is_413_before_it_is_read() -> None:
    with pytest.raises(InputError) as refused:
        read_form(form(*[("file", f"{i}.png", b"x") for i in range(3)]), max_images=2)
    assert refused.value.status == 413
    assert "limit of 2" in refused.value.message


def test_a_form_without_a_file_part_says_what_to_send() -> None:
    with pytest.raises(InputError, match="no field 'file'") as refused:
        read_form(form(("image", "a.png", b"x")))
    assert refused.value.status == 422


def test_a_form_of_endless_other_parts_is_refused() -> None:
    parts = [("note", None, b"")] * (MAX_OTHER_PARTS + 1)
    with pytest.raises(InputError, match="besides 'file'") as refused:
        read_form(form(*parts), chunk=65_536)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (form(("file", "a.png", b"x")), "multipart/form-data", "no boundary"),
        (b"--other-boundary\r\nnot a form\r\n", None, "malformed"),
    ],
    ids=["no boundary", "not cut by its boundary"],
)
def test_a_broken_form_is_a_400_that_says_why(
    body: bytes, content_type: str | None, says: str
) -> None:
    with pytest.raises(InputError, match=says) as refused:
        read_form(body, content_type or f"multipart/form-data; boundary={BOUNDARY}")
    assert refused.value.status == 400
