"""Publishing without TensorFlow: one file replaced atomically, or the next repository version."""

import os
import stat
import threading
from pathlib import Path

import pytest

from model_contract import published_versions, version_dir
from training.publish import STAGING_PREFIX, atomic_output, next_version, publish_version


def _write_then_fail(target: Path) -> None:
    with atomic_output(target) as staged:
        staged.write_bytes(b"half-written")
        raise RuntimeError("export failed")


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "models" / "mnist.onnx"
    with atomic_output(target) as staged:
        assert staged.parent == target.parent
        staged.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600

    with pytest.raises(RuntimeError, match="export failed"):
        _write_then_fail(target)
    assert target.read_bytes() == b"first"
    assert os.listdir(target.parent) == ["mnist.onnx"]


def _write_model(directory: Path, version: int) -> None:
    (directory / "model.onnx").write_bytes(f"model {version}".encode())
    (directory / "metrics.json").write_text("{}")


def test_versions_are_numbered_from_one_after_the_highest(tmp_path: Path) -> None:
    assert next_version(tmp_path) == 1
    assert publish_version(tmp_path, _write_model) == 1
    assert publish_version(tmp_path, _write_model) == 2
    (tmp_path / "mnist" / "7").mkdir()
    (tmp_path / "mnist" / "notes").mkdir()
    assert publish_version(tmp_path, _write_model) == 8
    assert version_dir(tmp_path, 8).joinpath("model.onnx").read_bytes() == b"model 8"
    assert sorted(published_versions(tmp_path)) == [1, 2, 7, 8]


def test_a_published_version_is_readable_by_others_and_holds_its_reports(tmp_path: Path) -> None:
    publish_version(tmp_path, _write_model)
    directory = version_dir(tmp_path, 1)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    assert sorted(p.name for p in directory.iterdir()) == ["metrics.json", "model.onnx"]


def test_a_failed_build_publishes_nothing_and_leaves_no_staging(tmp_path: Path) -> None:
    publish_version(tmp_path, _write_model)

    def fail(directory: Path, version: int) -> None:
        (directory / "model.onnx").write_bytes(b"half")
        raise RuntimeError("gate failed")

    with pytest.raises(RuntimeError, match="gate failed"):
        publish_version(tmp_path, fail)
    assert os.listdir(tmp_path / "mnist") == ["1"]


def test_a_version_taken_meanwhile_is_never_overwritten(tmp_path: Path) -> None:
    publish_version(tmp_path, _write_model)

    def race(directory: Path, version: int) -> None:
        if version == 2:  # another job publishes 2 while this one builds it
            other = version_dir(tmp_path, 2)
            other.mkdir()
            (other / "model.onnx").write_bytes(b"the other job's")
        _write_model(directory, version)

    assert publish_version(tmp_path, race) == 3
    assert version_dir(tmp_path, 2).joinpath("model.onnx").read_bytes() == b"the other job's"
    assert version_dir(tmp_path, 3).joinpath("model.onnx").read_bytes() == b"model 3"
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(publish_version(tmp_path, _write_model)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [1, 2, 3, 4]
    for version in results:
        assert version_dir(tmp_path, version).joinpath("model.onnx").read_bytes() == (
            f"model {version}".encode()
        )
