"""Which commit of this repository a run comes from: no TensorFlow, so anything may ask."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """HEAD of the checkout the job runs from, ``-dirty`` when tracked files differ; else None."""
    try:
        head = _git(repo, "rev-parse", "--verify", "HEAD")
        changes = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if changes else head or None


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
