"""service.native_memory: glibc is told to give big buffers back, unless the operator
already chose through the environment."""

import platform

import pytest

from service import native_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_both_settings_are_applied_when_the_environment_sets_neither(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert native_memory.tune_allocator() == [
        "MALLOC_MMAP_THRESHOLD_=1048576",
        "MALLOC_ARENA_MAX=2",
    ]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_variable_the_operator_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert native_memory.tune_allocator() == ["MALLOC_MMAP_THRESHOLD_=1048576"]
