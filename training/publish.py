"""Publishing: one model file replaced atomically, or the next version of a model repository.

Both build in a temporary place beside the target and appear in one rename, so a reader,
such as a service polling the repository, never sees a half-written or unverified model.
No TensorFlow here: tests and tools may publish with it too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from model_contract import model_dir, published_versions, version_dir

STAGING_PREFIX = ".staging-"
# Two jobs that publish at once both aim at the same next number; the loser takes the next.
PUBLISH_ATTEMPTS = 5


class VersionTakenError(OSError):
    """Every version number tried was taken by other publishers meanwhile."""


def _readable(path: Path, mode: int) -> None:
    # mkstemp and mkdtemp make private files (0600, 0700); a model must be readable like
    # any file the user creates, e.g. by a service running as another user.
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it replaces ``path`` in one step.

    On any exception the temp file is removed and ``path`` keeps its old content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    staged = Path(name)
    try:
        _readable(staged, 0o666)
        yield staged
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def next_version(repository: Path) -> int:
    versions = published_versions(repository)
    return max(versions, default=0) + 1


def publish_version(repository: Path, build: Callable[[Path, int], None]) -> int:
    """Publish the repository's next version; return its number.

    ``build(directory, version)`` fills a staging directory beside the versions and raises
    if the model must not be published; then the directory takes its version's name in one
    rename. A failed build leaves nothing behind, and the versions already there as they were.
    """
    parent = model_dir(repository)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(PUBLISH_ATTEMPTS):
        version = next_version(repository)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
        try:
            _readable(staging, 0o777)
            build(staging, version)
            _sync_tree(staging)
            try:
                # rename(2) refuses to replace a non-empty directory: a version another job
                # published meanwhile is never overwritten.
                staging.rename(version_dir(repository, version))
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
            _sync(parent)
            return version
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise VersionTakenError(
        errno.EEXIST, f"{PUBLISH_ATTEMPTS} version numbers in {parent} were taken meanwhile"
    )


def _sync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
    _sync(directory)


def _sync(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
