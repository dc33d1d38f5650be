"""Image files as /predict receives them: multipart parts or one raw body, decoded on the
decode budget's threads, under its limits."""

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.decode_budget import INLINE_FILE_BYTES, INLINE_IMAGE_BYTES, DecodeBudget
from service.errors import InputError, about
from service.inputs import image_files
from service.inputs.model_input import ModelInput, check_count
from service.settings import Settings

NamedFile = tuple[str, bytes]  # what an error calls the file, and its bytes


async def files_from_form(request: Request, settings: Settings) -> list[NamedFile]:
    """The parts named ``file`` of a multipart body, each an upload."""
    limit = settings.max_images_per_request
    # One file over the limit is enough to tell; the parser refuses more before reading them.
    async with request.form(max_files=limit + 1, max_part_size=settings.max_body_bytes) as form:
        parts = form.getlist("file")
        if not parts:
            raise InputError(
                "multipart body has no field 'file': send each image as a file part named 'file'"
            )
        check_count(len(parts), limit)
        files = []
        for index, part in enumerate(parts, start=1):
            if not isinstance(part, UploadFile):
                raise InputError(f"field 'file' #{index} is text, not a file upload")
            files.append((f"file {part.filename or f'#{index}'}", await part.read()))
    return files


async def images_from_files(
    files: list[NamedFile], settings: Settings, budget: DecodeBudget
) -> ModelInput:
    """Image files -> (N, 28, 28, 1), on the budget's threads: a big photo takes milliseconds
    to decode, which on the event loop would stall every other request meanwhile. One small
    file is the exception: it decodes on the loop (``decode_budget.INLINE_IMAGE_BYTES``).

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
