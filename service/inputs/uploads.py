"""Image files as /predict receives them, multipart parts or one raw body, decoded under
the decode budget's limits: one small file on the event loop, the rest on its threads."""

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from service.decode_budget import DecodeBudget
from service.errors import InputError, about
from service.inputs import image_files
from service.inputs.model_input import ModelInput, check_count
from service.settings import Settings

if TYPE_CHECKING:  # python-multipart declares its callbacks' types for type checkers only
    from python_multipart.multipart import MultipartCallbacks

NamedFile = tuple[str, bytes]  # what an error calls the file, and its bytes

# One file up to this many bytes, and up to this many decoded, decodes on the event loop:
# 0.14 ms for a 28x28 PNG, 0.45 ms at worst (a noisy 128x128 photo), where the two
# hand-overs to a decoding thread cost more in GIL waits under load. PNG digits at c=32
# 1.15x req/s and 0.58x p99, c=1 1.32x (bench.ab --payload png).
INLINE_FILE_BYTES = 65_536
INLINE_IMAGE_BYTES = 16_384  # 64x64 RGBA, 128x128 grey

# Parts other than ``file`` a form may carry before it is refused, as Starlette's parser
# allows: each costs parsing on the event loop.
MAX_OTHER_PARTS = 1000


async def files_from_form(request: Request, settings: Settings) -> list[NamedFile]:
    """The parts named ``file`` of a multipart body, each an upload.

    Parsed with python-multipart as the body streams in, keeping only the files' bytes:
    Starlette's ``request.form()`` spools each file to a temporary file and awaits each
    write, which cost a 28x28 PNG upload 55 us of the event loop against 15 here.
    """
    _, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise InputError(
            "the multipart/form-data Content-Type has no boundary parameter: let the HTTP "
            "client build the form (curl -F file=@digit.png, FormData in a browser)",
            status=400,
        )
    form = _Form(settings.max_images_per_request)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InputError(
            f"the multipart body is malformed ({exc}): send a multipart/form-data body whose "
            "parts are separated by the boundary its Content-Type names",
            status=400,
        ) from None
    if not form.files:
        raise InputError(
            "multipart body has no field 'file': send each image as a file part named 'file'"
        )
    return form.files


class _Form:
    """python-multipart's callbacks: the ``file`` parts, their names and bytes, and the
    limits on how many parts may come."""

    def __init__(self, max_files: int) -> None:
        self.files: list[NamedFile] = []
        self._max_files = max_files
        self._other_parts = 0
        self._disposition = b""  # the part's Content-Disposition: all that is read of it
        self._header = self._value = b""
        self._chunks: list[bytes] | None = None  # the data of a file part, else None
        self._name = ""

    def callbacks(self) -> "MultipartCallbacks":
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._disposition, self._chunks = b"", None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.strip().lower() == b"content-disposition":
            self._disposition = self._value.strip()
        self._header = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file":
            self._other_parts += 1
            if self._other_parts > MAX_OTHER_PARTS:
                raise InputError(
                    f"the form has over {MAX_OTHER_PARTS} parts besides 'file': send only the "
                    "image files, each as a part named 'file'",
                    status=400,
                )
            return
        index = len(self.files) + 1
        check_count(index, self._max_files)  # 413 at once, before the part is read
        filename = options.get(b"filename")
        if filename is None:
            raise InputError(f"field 'file' #{index} is text, not a file upload")
        self._name = f"file {filename.decode('utf-8', 'replace') or f'#{index}'}"
        self._chunks = []

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._chunks is not None:
            self._chunks.append(data[start:end])

    def _end(self) -> None:
        if self._chunks is not None:
            self.files.append((self._name, b"".join(self._chunks)))
            self._chunks = None


async def images_from_files(
    files: list[NamedFile], settings: Settings, budget: DecodeBudget
) -> ModelInput:
    """Image files -> (N, 28, 28, 1), on the budget's threads: a big photo takes milliseconds
    to decode, which on the event loop would stall every other request meanwhile. One small
    file is the exception: it decodes on the loop (``INLINE_FILE_BYTES``,
    ``INLINE_IMAGE_BYTES``).

    The headers are read first, so that the budget admits or refuses the request before a
    pixel is decoded. The files decode one after another: the largest is what the request
    holds at once.
    """
    if len(files) == 1 and len(files[0][1]) <= INLINE_FILE_BYTES:
        opened = _open_files(files, settings)
        if image_files.decoded_bytes(opened[0][1]) <= INLINE_IMAGE_BYTES:
            return _decoded_files(opened)  # closes the image
    else:
        opened = await budget.run(_open_files, files, settings)
    try:
        needed = max(image_files.decoded_bytes(image) for _, image in opened)
        async with budget.admit(needed):
            return await budget.run(_decoded_files, opened)
    finally:
        for _, image in opened:
            image.close()


def _open_files(files: list[NamedFile], settings: Settings) -> list[tuple[str, Image.Image]]:
    opened: list[tuple[str, Image.Image]] = []
    try:
        for name, data in files:
            with about(name):
                image = image_files.open_image(
                    data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes
                )
            opened.append((name, image))
    except BaseException:
        for _, image in opened:
            image.close()
        raise
    return opened


def _decoded_files(opened: list[tuple[str, Image.Image]]) -> ModelInput:
    images = []
    for name, image in opened:
        with about(name):
            images.append(image_files.image_from_opened(image))
    return np.stack(images)[:, :, :, np.newaxis]
