"""docs/config.md, generated from the schema's field descriptions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rollwise.config.schema import BundleConfig, ProjectConfig

SCHEMA_IDS = {
    False: "urn:rollwise:schema:rollwise.yaml",
    True: "urn:rollwise:schema:rollwise-bundle.yaml",
}


def json_schema(bundle: bool = False) -> dict[str, Any]:
    """The JSON Schema of rollwise.yaml (or rollwise-bundle.yaml), with its `$id`."""
    schema = (BundleConfig if bundle else ProjectConfig).model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_IDS[bundle],
        **schema,
    }


def markdown() -> str:
    lines = [
        "# rollwise.yaml reference",
        "",
        "Generated from the schema by `rollwise config docs`; "
        "`rollwise config schema` prints the JSON Schema for editors.",
        "",
    ]
    _model(ProjectConfig, "", lines)
    lines += [
        "# rollwise-bundle.yaml reference",
        "",
        "Services deployed and rolled back together (docs/bundles.md).",
        "",
    ]
    _model(BundleConfig, "", lines)
    return "\n".join(lines) + "\n"


def _model(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    lines += [
        f"## `{prefix or '(top level)'}`",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    nested: list[tuple[type[BaseModel], str]] = []
    for name, f in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        ann = f.annotation
        sub = _submodel(ann)
        if sub is not None:
            nested.append((sub, key + (".<name>" if "dict" in str(ann) else "")))
        lines.append(f"| `{name}` | {_type(ann)} | {_default(f)} | {f.description or ''} |")
    lines.append("")
    for sub, key in nested:
        _model(sub, key, lines)


def _submodel(ann: Any) -> type[BaseModel] | None:
    for a in (ann, *getattr(ann, "__args__", ())):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _type(ann: Any) -> str:
    text = getattr(ann, "__name__", None) if not getattr(ann, "__args__", None) else None
    return f"`{text or str(ann).replace('typing.', '')}`".replace("|", "\\|")


def _default(f: Any) -> str:
    if f.is_required():
        return "required"
    if f.default_factory is not None:
        value = f.default_factory()
        return (
            "see below"
            if isinstance(value, BaseModel)
            or (
                isinstance(value, dict)
                and value
                and isinstance(next(iter(value.values())), BaseModel)
            )
            else f"`{value}`"
        )
    return "" if f.default is PydanticUndefined else f"`{f.default}`"
