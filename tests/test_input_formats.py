"""service.inputs.formats and model_input: one table for what /predict reads, one rule for
what every input becomes."""

import numpy as np
import pytest

from service.errors import InputError
from service.inputs import formats
from service.inputs.model_input import check_count, to_model_input


def test_every_documented_content_type_is_read_by_its_table_entry() -> None:
    for entry in formats.FORMATS:
        for media_type in entry.media_types:
            assert formats.format_for(media_type) is entry
            assert formats.format_for(f"{media_type.upper()}; charset=utf-8") is entry


def test_the_openapi_body_documents_exactly_the_table() -> None:
    body = formats.openapi_request_body()
    documented = [t for entry in formats.FORMATS for t in entry.media_types]
    assert list(body["content"]) == documented
    for entry in formats.FORMATS:
        assert entry.how in body["description"]


def test_an_unsupported_type_is_a_415_that_names_every_format() -> None:
    with pytest.raises(InputError) as caught:
        formats.format_for("text/plain")
    assert caught.value.status == 415
    assert "'text/plain'" in caught.value.message
    for entry in formats.FORMATS:
        assert entry.how.replace("`", "") in caught.value.message


def test_image_types_outside_the_list_are_read_as_image_files() -> None:
    # Their own bytes tell the format: a client's image/jpg or image/x-png still works.
    image_entry = formats.format_for("image/png")
    assert formats.format_for("image/jpg") is image_entry
    assert formats.format_for("image/x-png") is image_entry


def test_a_missing_content_type_is_a_415() -> None:
    with pytest.raises(InputError) as caught:
        formats.format_for(None)
    assert caught.value.status == 415
    assert "(none)" in caught.value.message


@pytest.mark.parametrize(("count", "status"), [(0, 422), (5, 413)])
def test_a_request_holds_between_one_image_and_the_limit(count: int, status: int) -> None:
    with pytest.raises(InputError) as caught:
        check_count(count, 4)
    assert caught.value.status == status
    assert check_count(4, 4) == 4


def test_grey_levels_are_divided_by_255_into_a_c_ordered_model_input() -> None:
    grey = np.asfortranarray(np.arange(2 * 784).reshape(2, 28, 28) % 256)
    images = to_model_input(grey, grey_levels=True, fix="")
    assert images.shape == (2, 28, 28, 1)
    assert images.dtype == np.float32
    assert images.flags.c_contiguous
    np.testing.assert_allclose(images[..., 0], grey / 255.0, rtol=1e-6)


def test_float32_values_in_range_are_not_copied() -> None:
    values = np.full((3, 784), 0.5, np.float32)
    assert np.shares_memory(to_model_input(values, grey_levels=False, fix=""), values)


@pytest.mark.parametrize(
    ("values", "grey_levels", "fragment"),
    [
        (np.full((1, 28, 28), 2.0), False, "the value at [0][0] is 2.0, outside [0, 1]"),
        (np.full((1, 784), np.nan), False, "the value at [0] is nan: values must be finite"),
        (np.full((1, 784), 300), True, "is 300, outside the grey levels 0-255"),
        (np.full((1, 784), -1), True, "is -1, outside the grey levels 0-255"),
    ],
)
def test_a_value_out_of_range_is_named_by_its_position(
    values: np.ndarray, grey_levels: bool, fragment: str
) -> None:
    with pytest.raises(InputError) as caught:
        to_model_input(values, grey_levels=grey_levels, fix="do this")
    assert caught.value.status == 422
    assert fragment in caught.value.message
    assert caught.value.message.endswith("; do this")


def test_in_a_batch_the_message_names_the_image_too() -> None:
    batch = np.zeros((4, 28, 28), np.float32)
    batch[3, 4, 5] = np.inf
    with pytest.raises(InputError) as caught:
        to_model_input(batch, grey_levels=False, fix="")
    assert "image 3: the value at [4][5] is inf" in caught.value.message
