"""Render the recipe reference (every key, its type, default and description) from the pydantic schema."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from compress.losses import LOSSES
from compress.recipe.schema import Recipe
from compress.stages import STAGES


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + (
            " \\| null" if type(None) in args else ""
        )
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if isinstance(annotation, type):
        return annotation.__name__ if not issubclass(annotation, BaseModel) else f"[{annotation.__name__}]"
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(see section)"
        if isinstance(value, list) and value and isinstance(value[0], BaseModel):
            return ", ".join(v.model_dump(exclude_none=True).__repr__() for v in value)
        return f"`{value}`"
    return "" if field.default is PydanticUndefined else f"`{field.default}`"


def _section(model: type[BaseModel], title: str, seen: set[type[BaseModel]]) -> list[str]:
    seen.add(model)
    paragraph = (model.__doc__ or "").strip().split("\n\n")[0]  # the whole first paragraph, never a cut line
    lines = [f"### {title}", "", " ".join(line.strip() for line in paragraph.splitlines()), ""]
    lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    nested: list[type[BaseModel]] = []
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
        for sub in _models_in(field.annotation):
            if sub not in seen and sub not in nested:
                nested.append(sub)
    lines.append("")
    for sub in nested:
        if sub not in seen:
            lines += _section(sub, sub.__name__, seen)
    return lines


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def render() -> str:
    # stage and loss schemas get their own sections below, once each: never also as a nested section
    seen: set[type[BaseModel]] = {c for _, s in STAGES.items() for c in s.configs}
    seen |= {loss.config for _, loss in LOSSES.items()}
    out = [
        "# Recipe reference",
        "",
        "Generated from the schema by `compress schema --markdown`; do not edit by hand. Unknown keys are "
        "errors. Relative paths are relative to the recipe file.",
        "",
    ]
    out += _section(Recipe, "Recipe (top level)", seen)
    out += ["## Stages", "", "Each entry of `stages` picks its schema with the `stage` key.", ""]
    for name, stage in STAGES.items():
        if not stage.in_recipe:
            continue
        if len(stage.configs) == 1:
            out += _section(stage.configs[0], f"`stage: {name}`", seen)
            continue
        for i, config in enumerate(stage.configs):
            method = typing.get_args(config.model_fields["method"].annotation)[0]
            default = " (the default)" if i == 0 else ""
            out += _section(config, f"`stage: {name}`, `method: {method}`{default}", seen)
    out += ["## Losses", "", "Entries of `distill.losses`, selected by `name`.", ""]
    for name, loss in LOSSES.items():
        out += _section(loss.config, f"`name: {name}`", seen)
    return "\n".join(out).rstrip() + "\n"
