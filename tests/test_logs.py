"""Log lines: what the service's formats print does not depend on the record fields that
workers stop logging from finding (``skip_unused_record_fields``)."""

import json
import subprocess
import sys

# Formats one access record and one error record with an exception, before and after.
_SCRIPT = """
import io, json, logging
from service.logs import AccessTextFormatter, JsonFormatter, skip_unused_record_fields

logger = logging.getLogger("service.access")
logger.propagate = False
logger.setLevel(logging.INFO)
streams = {"text": io.StringIO(), "json": io.StringIO()}
for name, formatter in (("text", AccessTextFormatter()), ("json", JsonFormatter())):
    handler = logging.StreamHandler(streams[name])
    handler.setFormatter(formatter)
    logger.addHandler(handler)

def lines():
    for stream in streams.values():
        stream.seek(0)
        stream.truncate()
    logger.info("request", extra={
        "request_id": "r1", "method": "POST", "route": "/predict", "status": 200,
        "latency_ms": 1.5, "images": 1, "model_version": "1", "client": "a:1", "key_id": None,
    })
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    documents = [json.loads(line) for line in streams["json"].getvalue().splitlines()]
    for document in documents:
        document.pop("time")
    return streams["text"].getvalue().splitlines()[0], documents

before = lines()
skip_unused_record_fields()
print(json.dumps({"before": before, "after": lines(), "srcfile": logging._srcfile}))
"""


def test_the_text_and_json_lines_are_the_same_without_caller_thread_and_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(done.stdout)
    assert seen["srcfile"] is None  # the switch took
    assert seen["after"] == seen["before"]
    text, documents = seen["after"]
    assert (
        text == 'INFO:     a:1 - "POST /predict" 200 1.5 ms images=1 model_version=1 request_id=r1'
    )
    assert "ValueError: boom" in documents[1]["exception"]
