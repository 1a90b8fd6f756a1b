"""What the dashboard's pages share: the Jinja2 templates and the static files, both inside
the package (no CDN: the pages work on a network without one)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")


def when(ts: float | None) -> str:
    """A timestamp as UTC text; the page's script shows it in the viewer's zone too."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(float(ts), UTC).isoformat()


def seconds(s: float | None) -> str:
    return "-" if s is None else f"{float(s):.1f} s"


templates.env.filters.update(when=when, iso=iso, seconds=seconds)
