"""New request ids: unique within a process, across processes and across a fork."""

import multiprocessing
import os
import re

from service.middleware import request_id_from


def test_a_sane_client_id_is_kept_and_an_insane_one_replaced() -> None:
    assert request_id_from("client-chosen.id-1") == "client-chosen.id-1"
    assert request_id_from("no spaces") != "no spaces"
    assert request_id_from("x" * 129) != "x" * 129


def test_new_ids_are_32_hex_digits_and_never_repeat() -> None:
    ids = [request_id_from(None) for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", new) for new in ids)
    assert len(set(ids)) == len(ids)


def _one_id(queue: "multiprocessing.Queue[str]") -> None:
    queue.put(request_id_from(None))


def test_another_process_draws_other_ids() -> None:
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[str] = context.Queue()
    process = context.Process(target=_one_id, args=(queue,))
    process.start()
    theirs = queue.get(timeout=60)
    process.join(timeout=60)
    ours = request_id_from(None)
    assert theirs[:16] != ours[:16]


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    request_id_from(None)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's coverage is not collected
        os.write(write_end, request_id_from(None).encode())
        os._exit(0)
    os.close(write_end)
    theirs = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(child, 0)
    ours = request_id_from(None)
    assert len(theirs) == 32
    assert theirs[:16] != ours[:16]
