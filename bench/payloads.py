"""Request bodies made of real MNIST test digits, sent the way typical clients send them."""

import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from training.data import TEST_IMAGES, TEST_LABELS, DatasetError, RawSplit, read_idx_split

REPO_ROOT = Path(__file__).resolve().parent.parent
_BOUNDARY = "mnist-bench-boundary-7f3a"


class PayloadError(Exception):
    """The digits cannot be read, or the server does not answer a payload correctly."""


@dataclass(frozen=True)
class Payload:
    name: str
    path: str  # with its query string
    content_type: str
    body: bytes
    labels: tuple[int, ...]  # the true digit of each image in the body

    @property
    def images(self) -> int:
        return len(self.labels)


def offline_data_dir() -> Path:
    default = REPO_ROOT.parent / "shared" / "data" / "mnist-offline"
    return Path(os.environ.get("MNIST_OFFLINE_DATA", default))


def load_test_digits(directory: Path) -> RawSplit:
    try:
        return read_idx_split(directory, TEST_IMAGES, TEST_LABELS)
    except DatasetError as exc:
        raise PayloadError(
            f"cannot read the MNIST test digits ({exc}); point MNIST_OFFLINE_DATA at a "
            "directory of MNIST IDX files"
        ) from exc


def json_payload(image: npt.NDArray[np.uint8], label: int) -> Payload:
    """One 28x28 digit as nested 0-255 integers: what a typical JSON client sends."""
    body = json.dumps({"image": image.tolist()}, separators=(",", ":")).encode()
    return Payload("json", "/predict", "application/json", body, (label,))


def png_payload(image: npt.NDArray[np.uint8], label: int) -> Payload:
    """One digit as a PNG file in a multipart form, field ``file``, as a browser uploads it."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    head = (
        f"--{_BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="digit.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + buffer.getvalue() + f"\r\n--{_BOUNDARY}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={_BOUNDARY}"
    return Payload("png", "/predict", content_type, body, (label,))


def binary_payload(images: npt.NDArray[np.uint8], labels: npt.NDArray[np.uint8]) -> Payload:
    """A batch as raw uint8 bytes, its shape in the query string: no JSON at all."""
    n = len(images)
    path = f"/predict?dtype=uint8&shape={n},28,28"
    return Payload(
        f"binary{n}",
        path,
        "application/octet-stream",
        np.ascontiguousarray(images, dtype=np.uint8).tobytes(),
        tuple(int(label) for label in labels),
    )


def check_answer(base_url: str, payload: Payload, timeout_s: float = 30.0) -> float:
    """Sends ``payload`` once; returns the share of digits predicted right, or raises."""
    request = urllib.request.Request(
        base_url + payload.path,
        data=payload.body,
        headers={"Content-Type": payload.content_type},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode(errors="replace")
        raise PayloadError(f"{payload.name}: HTTP {exc.code} from the server: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
        raise PayloadError(f"{payload.name}: no valid answer from the server ({exc})") from exc
    digits = [int(p["digit"]) for p in document.get("predictions", [])]
    if len(digits) != payload.images:
        raise PayloadError(
            f"{payload.name}: {len(digits)} predictions for {payload.images} images: {document}"
        )
    right = sum(d == label for d, label in zip(digits, payload.labels, strict=True))
    return float(right / payload.images)
