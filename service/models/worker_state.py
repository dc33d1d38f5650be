"""What the uvicorn workers of one server share about models, through a directory.

Each worker is its own process with its own sessions, so two things must cross between
them: the model-control state that a load or unload request set on one worker (the others
adopt it at their next poll), and each worker's view of the versions, which
``/v2/repository/index`` reports for all of them, disagreements included. Without a
directory (one process, e.g. tests and plain ``uvicorn``) both stay in memory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONTROL_FILE = "control.json"
WORKER_PREFIX = "worker-"


@dataclass(frozen=True)
class Control:
    """What model control asked for: a policy in place of the configured one, or nothing."""

    policy: str | None = None
    unloaded: bool = False
    generation: int = 0


@dataclass(frozen=True)
class VersionReport:
    state: str
    reason: str = ""


class WorkerState:
    def __init__(self, directory: Path | None):
        self.directory = directory
        self.pid = os.getpid()
        self._control = Control()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def read_control(self) -> Control:
        if self.directory is None:
            return self._control
        try:
            document = json.loads((self.directory / CONTROL_FILE).read_text())
            return Control(**document)
        except FileNotFoundError:
            return Control()
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("ignoring unreadable model-control state: %s", exc)
            return Control()

    def write_control(self, control: Control) -> None:
        self._control = control
        if self.directory is not None:
            _write_atomically(self.directory / CONTROL_FILE, asdict(control))

    def publish(self, versions: dict[int, VersionReport]) -> None:
        if self.directory is not None:
            document = {str(v): asdict(report) for v, report in versions.items()}
            _write_atomically(self.directory / f"{WORKER_PREFIX}{self.pid}.json", document)

    def all_workers(self) -> dict[int, dict[int, VersionReport]]:
        """Every live worker's versions, by pid; only this one's without a directory."""
        if self.directory is None:
            return {}
        workers: dict[int, dict[int, VersionReport]] = {}
        for path in self.directory.glob(f"{WORKER_PREFIX}*.json"):
            pid = int(path.stem.removeprefix(WORKER_PREFIX))
            if not _alive(pid):
                # A worker that died left its view behind: it no longer serves anything.
                path.unlink(missing_ok=True)
                continue
            try:
                document: dict[str, Any] = json.loads(path.read_text())
                workers[pid] = {int(v): VersionReport(**r) for v, r in document.items()}
            except (OSError, ValueError, TypeError):
                continue  # being replaced right now: the next index call reads it
        return workers

    def forget(self) -> None:
        if self.directory is not None:
            (self.directory / f"{WORKER_PREFIX}{self.pid}.json").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomically(path: Path, document: object) -> None:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
