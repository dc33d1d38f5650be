"""The access log: the same lines as a ``service.access`` record's, one write per loop
iteration, and none left behind in a buffer."""

import asyncio
import io
import json
import logging
from typing import Any

import pytest

from service.access_log import AccessLog
from service.logs import ACCESS_LOGGER, AccessTextFormatter, JsonFormatter

FIELDS: dict[str, Any] = {
    "request_id": "r1",
    "method": "POST",
    "route": "/predict",
    "status": 200,
    "latency_ms": 1.5,
    "images": 1,
    "model_version": "1",
    "client": "127.0.0.1:5000",
    "key_id": None,
}


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def through_logging(formatter: logging.Formatter) -> str:
    record = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None, extra=FIELDS
    )
    return formatter.format(record)


def test_a_text_line_is_what_the_access_record_formats_to() -> None:
    stream = io.StringIO()
    AccessLog("text", stream).request(FIELDS)  # no running loop: written at once
    assert stream.getvalue() == through_logging(AccessTextFormatter()) + "\n"
    assert stream.getvalue().startswith('INFO:     127.0.0.1:5000 - "POST /predict" 200 1.5 ms')


def test_a_json_line_is_what_the_access_record_formats_to_but_its_time() -> None:
    stream = io.StringIO()
    AccessLog("json", stream).request(FIELDS)
    ours, theirs = json.loads(stream.getvalue()), json.loads(through_logging(JsonFormatter()))
    assert ours.pop("time")[:4] == theirs.pop("time")[:4]
    expected = {"level": "info", "logger": ACCESS_LOGGER, "message": "request", **FIELDS}
    assert ours == theirs == expected


async def test_lines_of_one_loop_iteration_go_out_in_one_write() -> None:
    stream = CountingStream()
    log = AccessLog("text", stream)
    for index in range(5):
        log.request({**FIELDS, "request_id": f"r{index}"})
    assert stream.writes == 0  # not yet: later in this iteration
    await asyncio.sleep(0)
    assert stream.writes == 1
    ids = [line.rsplit("request_id=", 1)[1] for line in stream.getvalue().splitlines()]
    assert ids == ["r0", "r1", "r2", "r3", "r4"]


async def test_a_line_goes_out_with_no_request_after_it() -> None:
    stream = CountingStream()
    log = AccessLog("text", stream)
    log.request(FIELDS)
    await asyncio.sleep(0)  # one iteration, then the worker could idle for good
    assert stream.getvalue().count("\n") == 1
    log.request(FIELDS)
    await asyncio.sleep(0)
    assert (stream.writes, stream.getvalue().count("\n")) == (2, 2)


async def test_flush_writes_what_is_pending_and_nothing_twice() -> None:
    stream = CountingStream()
    log = AccessLog("text", stream)
    log.flush()
    assert stream.writes == 0
    log.request(FIELDS)
    log.flush()  # as the app's lifespan does at shutdown, before the loop's own flush
    assert stream.writes == 1
    await asyncio.sleep(0)  # the loop's flush finds nothing left
    assert (stream.writes, stream.getvalue().count("\n")) == (1, 1)


def test_without_a_stream_lines_go_to_stdout_as_it_is_when_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    AccessLog("text").request(FIELDS)
    assert "request_id=r1" in capsys.readouterr().out
