"""Backups are ordered by when they were taken, not by their ids: two taken within one
second have ids that differ only in their random part."""

from __future__ import annotations

import json
from pathlib import Path

from rollwise.data.backups import Manifest, manifests


def write(folder: Path, backup_id: str, at: float) -> None:
    m = Manifest(backup_id, "prod", "sqlite", "sqlite:///x.db", f"{backup_id}.sqlite", 1, "0", at)
    (folder / f"{backup_id}.json").write_text(json.dumps(m.as_dict()))


def test_two_backups_in_one_second_are_in_the_order_they_were_taken(tmp_path: Path):
    write(tmp_path, "20261204T213359Z-feae21", 1796420039.2)  # first
    write(tmp_path, "20261204T213359Z-0b1c2d", 1796420039.7)  # second, smaller suffix
    write(tmp_path, "20261204T213358Z-ffffff", 1796420038.9)
    assert [m.id for m in manifests(tmp_path)] == [
        "20261204T213358Z-ffffff",
        "20261204T213359Z-feae21",
        "20261204T213359Z-0b1c2d",
    ]
    assert manifests(tmp_path / "none") == []
