"""Load a recipe file into a :class:`Recipe`, turning validation errors into `file:line key: message`."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

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
    return isinstance(node, dict) and (node.get("stage") == part or node.get("name") == part)


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
            tag = node.get("stage") or node.get("name") if isinstance(node, dict) else None
            lits = [typing.get_args(f.annotation) for k, f in arg.model_fields.items() if k in ("stage", "name")]
            if tag is None or any(tag in lit for lit in lits):
                return arg
        elif (found := _resolve(arg, node)) is not None:
            return found
    return None


def _describe(err: Any, loc: Loc, data: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1], data)
        allowed = list(parent.model_fields) if parent else []
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
        return f"missing the `{err.get('ctx', {}).get('discriminator', 'stage').strip(chr(39))}` key."
    if kind == "missing":
        return "required key is missing."
    return msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg


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
                loc = (*loc, str(err.get("ctx", {}).get("discriminator", "stage")).strip("'"))
            line = line_of(lines, loc)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where} {format_loc(loc)}: {_describe(err, loc, data)}")
        raise RecipeError("\n".join(dict.fromkeys(problems))) from None
