"""Safe YAML loading for recipes and device profiles: remembers the line of every key, for error messages, and
refuses what a safe loader alone lets through.

PyYAML's SafeLoader runs no code, but it expands aliases: a "billion laughs" file of a few hundred bytes
becomes billions of nodes, a recursive alias never ends, and a duplicate key silently keeps the last value. The
node graph is composed first (aliases stay shared references there, so composing is linear in the file's size)
and checked before anything is expanded: no cycles, a bounded number of nodes once expanded, a bounded depth,
no duplicate keys. Only then are the Python values constructed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.errors import CompressError, RecipeError
from compress.fileio import read_text

Loc = tuple[str | int, ...]

MAX_BYTES = 1 << 20  # a recipe or a device profile is a few kB
MAX_NODES = 100_000  # after alias expansion; the largest shipped recipe has a few hundred
MAX_DEPTH = 64  # nesting levels; the deepest shipped recipe has 6


class _Limits:
    """Checks a composed node graph without expanding it (sizes are memoised per node)."""

    def __init__(self, where: str, error: type[CompressError]) -> None:
        self.where, self.error = where, error
        self.sizes: dict[int, int] = {}
        self.depths: dict[int, int] = {}
        self.active: set[int] = set()

    def fail(self, node: yaml.Node, problem: str) -> CompressError:
        return self.error(f"{self.where}:{node.start_mark.line + 1}: {problem}")

    def check(self, node: yaml.Node) -> tuple[int, int]:
        """(nodes once expanded, depth) of ``node``; raises on cycles, duplicates and oversize."""
        key = id(node)
        if key in self.sizes:
            return self.sizes[key], self.depths[key]
        if key in self.active:
            raise self.fail(node, "a YAML alias refers to the node that contains it (a recursive alias).")
        self.active.add(key)
        size, depth = 1, 0
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        raise self.fail(
                            k,
                            f"duplicate key {k.value!r} (first at line {seen[k.value]}); YAML would silently "
                            "keep only the last one. Remove one of them.",
                        )
                    seen[k.value] = k.start_mark.line + 1
                children += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        for child in children:
            s, d = self.check(child)
            size, depth = size + s, max(depth, d + 1)
            if size > MAX_NODES:
                raise self.fail(
                    node,
                    f"the document expands to more than {MAX_NODES:,} values (YAML aliases repeated "
                    "inside aliases, a 'billion laughs' file?). Write the values out instead.",
                )
            if depth > MAX_DEPTH:
                raise self.fail(node, f"nested more than {MAX_DEPTH} levels deep.")
        self.active.discard(key)
        self.sizes[key], self.depths[key] = size, depth
        return size, depth


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


def parse_yaml(text: str, where: str, error: type[CompressError] = RecipeError) -> tuple[Any, dict[Loc, int]]:
    """Parse ``text`` with the safe loader after the checks above; ``where`` names the file in errors."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _Limits(where, error).check(node)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{at}: malformed YAML: {problem}. Check indentation and quoting.") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply to parse (more than {MAX_DEPTH} levels are refused).") from None
    finally:
        loader.dispose()
    lines: dict[Loc, int] = {}
    _walk(node, (), lines)
    return data, lines


def load_yaml(
    path: Path, what: str = "recipe file", error: type[CompressError] = RecipeError
) -> tuple[Any, dict[Loc, int]]:
    """Read and parse ``path``; return the data and a map from key path to line."""
    if not path.exists():
        raise error(f"{what} {path} does not exist. Pass the path of a YAML file.")
    return parse_yaml(read_text(path, what, error, max_bytes=MAX_BYTES), str(path), error)


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest existing prefix of ``loc``."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
