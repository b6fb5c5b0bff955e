"""Every file in invalid/ is a broken recipe (or points at a broken data file or device profile in invalid/data,
invalid/devices) whose first line says the message `compress validate` must give: bad YAML and YAML attacks,
numbers out of range, names that would be paths, bad labels, files that are not UTF-8, unsafe device profiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError

INVALID = Path(__file__).parent / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_bytes().splitlines()[0].decode()  # the rest of a file may be deliberately not UTF-8
    assert first.startswith("# expect: "), path
    return first[len("# expect: ") :].replace("{dir}", str(path.parent))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_recipe_gives_clear_error(path: Path) -> None:
    with pytest.raises(CompressError) as info:
        pipeline.validate(path)
    assert expected(path) in str(info.value)


def test_cli_error_is_one_paragraph_without_traceback() -> None:
    path = INVALID / "unknown_key.yaml"
    proc = subprocess.run([sys.executable, "-m", "compress", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Did you mean 'epochs'?" in proc.stderr


def test_valid_recipes_shipped_in_the_repo_validate() -> None:
    root = Path(__file__).resolve().parents[2]
    for recipe in (root / "recipes").glob("*.yaml"):
        assert pipeline.validate(recipe)[0].startswith("schema: ok"), recipe
