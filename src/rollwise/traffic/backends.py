"""Which address each backend name stands for, kept beside the environment's state for
routers (HAProxy, Caddy) that know addresses but not rollwise's instance names."""

from __future__ import annotations

import json
from pathlib import Path

from rollwise.traffic.base import Backend


class BackendMap:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Backend]:
        if not self.path.exists():
            return {}
        return {n: Backend(**b) for n, b in json.loads(self.path.read_text()).items()}

    def save(self, backends: dict[str, Backend]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({n: vars(b) for n, b in backends.items()}))
        tmp.replace(self.path)

    def add(self, backends: list[Backend]) -> dict[str, Backend]:
        known = self.load() | {b.name: b for b in backends}
        self.save(known)
        return known

    def forget(self, name: str) -> None:
        known = self.load()
        if known.pop(name, None):
            self.save(known)

    def get(self, name: str) -> Backend:
        try:
            return self.load()[name]
        except KeyError:
            raise KeyError(f"backend {name!r} was never registered with the router") from None
