"""Which published versions to serve: TF Serving's version policy, as one line of text.

``latest:N`` serves the N highest versions, ``all`` every version, ``specific:V[,V...]``
exactly those. Versions that failed to load are left out before the policy chooses, so
``latest:1`` means the newest version that can be served, not the newest number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

_SYNTAX = re.compile(r"latest:(?P<latest>[1-9][0-9]*)|all|specific:(?P<specific>[1-9][0-9,]*)")
POLICY_HELP = "latest:N (N >= 1), all, or specific:V[,V...] with positive integer versions"


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class VersionPolicy:
    kind: Literal["latest", "all", "specific"]
    latest: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        match = _SYNTAX.fullmatch(text.strip().replace(" ", ""))
        if match is None:
            raise PolicyError(f"version policy {text!r} is not {POLICY_HELP}")
        if match["latest"]:
            return cls("latest", latest=int(match["latest"]))
        if match["specific"]:
            parts = match["specific"].split(",")
            if not all(p.isdigit() and int(p) > 0 for p in parts):
                raise PolicyError(f"version policy {text!r} is not {POLICY_HELP}")
            return cls("specific", versions=tuple(sorted({int(p) for p in parts})))
        return cls("all")

    @classmethod
    def from_triton(cls, policy: Any) -> VersionPolicy:
        """Triton's model-config form: {"latest": {"num_versions": N}}, {"all": {}} or
        {"specific": {"versions": [V, ...]}}."""
        wrong = PolicyError(
            'version_policy must be {"latest": {"num_versions": N}}, {"all": {}} or '
            f'{{"specific": {{"versions": [V, ...]}}}}, got {policy!r}'
        )
        if not isinstance(policy, dict) or len(policy) != 1:
            raise wrong
        [(kind, body)] = policy.items()
        if kind == "all" and body == {}:
            return cls("all")
        if kind == "latest" and isinstance(body, dict) and body.keys() == {"num_versions"}:
            return cls.parse(f"latest:{body['num_versions']}")
        if kind == "specific" and isinstance(body, dict) and body.keys() == {"versions"}:
            versions = body["versions"]
            if isinstance(versions, list) and versions:
                return cls.parse("specific:" + ",".join(str(v) for v in versions))
        raise wrong

    def select(self, candidates: Iterable[int]) -> list[int]:
        """The versions to serve among ``candidates`` (published and loadable), ascending."""
        available = sorted(set(candidates))
        if self.kind == "latest":
            return available[-self.latest :]
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.latest}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"
