"""Load a recipe file into a :class:`Recipe`, turning validation errors into `file:line key: message`."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from compress.config import METHOD_SIBLINGS
from compress.errors import RecipeError
from compress.recipe.schema import Recipe
from compress.safe_yaml import Loc, line_of, load_yaml
from compress.stages import STAGES


def _clean_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Drop the union tags pydantic inserts (stage and loss names, model class names) from an error path."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1  # a missing key is reported at the end of the path: keep it
        tag_like = isinstance(part, str) and (
            part in STAGES or not part.isidentifier() or part[0].isupper() or _is_tag(node, part) or not last
        )
        if isinstance(node, dict) and part not in node and out and tag_like:
            continue  # a discriminator tag or a function-validator marker, not a key of the YAML mapping
        out.append(part)
        node = (
            node.get(part)
            if isinstance(node, dict)
            else node[part]
            if isinstance(node, list) and isinstance(part, int) and part < len(node)
            else None
        )
    return tuple(out)


def _is_tag(node: Any, part: str) -> bool:
    if not isinstance(node, dict):
        return False
    if node.get("stage") == part or node.get("name") == part or node.get("method") == part:
        return True
    # a method union's tag when the recipe leaves `method` out (the stage's default method)
    stage = node.get("stage")
    return "method" not in node and isinstance(stage, str) and stage in STAGES and part in _methods(stage)


def _methods(stage: str) -> list[str]:
    configs = STAGES.get(stage).configs
    return [str(typing.get_args(c.model_fields["method"].annotation)[0]) for c in configs if "method" in c.model_fields]


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The pydantic model class describing the mapping at ``loc`` (for key suggestions)."""
    model: type[BaseModel] | None = Recipe
    node = data
    mapping_value: Any = None  # the value type while inside a dict[str, Model] field
    item_type: Any = None  # the item type while inside a list[Model] field (resolved on the item itself)
    for part in loc:
        node = _child(node, part)
        if mapping_value is not None:
            model, mapping_value = _resolve(mapping_value, node), None
            continue
        if isinstance(part, int):
            if item_type is not None:
                model, item_type = _resolve(item_type, node), None
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        if typing.get_origin(field.annotation) is dict:
            mapping_value = typing.get_args(field.annotation)[1]
            continue
        if typing.get_origin(field.annotation) is list:
            item_type = typing.get_args(field.annotation)[0]
            continue
        model = _resolve(field.annotation, node)
    return model


def _resolve(annotation: Any, node: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            if _matches(arg, node):
                return arg
        elif (found := _resolve(arg, node)) is not None:
            return found
    return None


def _matches(model: type[BaseModel], node: Any) -> bool:
    """Whether a union member is the one the mapping's tags (`stage`, `name`, `method`) choose."""
    if not isinstance(node, dict):
        return True
    for key in ("stage", "name", "method"):
        field = model.model_fields.get(key)
        if field is None:
            continue
        value = node.get(key)
        if value is None and key == "method":
            if field.is_required():  # a method the recipe must name: not the default
                return False
            continue
        if value is not None and value not in typing.get_args(field.annotation):
            return False
    return True


def _describe(err: Any, loc: Loc, data: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1], data)
        allowed = list(parent.model_fields) if parent else []
        owners = _owners(parent, str(loc[-1]))
        if owners:
            methods = " or ".join(f"`method: {m}`" for m in owners)
            mine = typing.get_args(parent.model_fields["method"].annotation)[0] if parent else ""
            return (f"`{loc[-1]}` applies to {methods}, not `method: {mine}`. Keys of `method: {mine}`: "
                    f"{', '.join(allowed)}.")  # fmt: skip
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown key.{hint} Allowed here: {', '.join(allowed)}." if allowed else f"unknown key.{hint}"
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        expected = err.get("ctx", {}).get("expected_tags", "")
        close = difflib.get_close_matches(str(tag), [t.strip(" '") for t in str(expected).split(",")], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown value {tag!r}.{hint} Expected one of: {expected}."
    if kind == "union_tag_not_found":
        key = str(err.get("ctx", {}).get("discriminator", "stage")).strip("'").removesuffix("()")
        return f"missing the `{key}` key."
    if kind == "missing":
        return "required key is missing."
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg


def _owners(model: type[BaseModel] | None, key: str) -> list[str]:
    """The other methods of the same stage whose config has ``key``."""
    siblings = METHOD_SIBLINGS.get(model, []) if model is not None else []
    return [str(typing.get_args(s.model_fields["method"].annotation)[0]) for s in siblings if key in s.model_fields]


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_recipe(path: Path) -> Recipe:
    """Parse and validate a recipe file; every problem is reported as `file:line key: message`."""
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping with name, data, teacher and stages.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _clean_loc(err["loc"], data)
            if err["type"] == "union_tag_invalid":
                key = str(err.get("ctx", {}).get("discriminator", "stage")).strip("'")
                loc = (*loc, key.removesuffix("()"))  # a callable discriminator is named `method()`
            line = line_of(lines, loc)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where} {format_loc(loc)}: {_describe(err, loc, data)}")
        raise RecipeError("\n".join(dict.fromkeys(problems))) from None
