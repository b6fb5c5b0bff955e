"""A classification model plus what is needed to feed, save and rebuild it (tokenizer, kind, spec, transforms)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from compress.errors import ModelError
from compress.models.inputs import InputSpec
from compress.models.transforms import apply_transforms

Kind = Literal["hf", "cnn", "python"]  # how the module is built and stored (not what it is: that is its family)
Modality = Literal["text", "image", "lm"]  # lm: token sequences for a causal language model
META_FILE = "compress_model.json"


def import_factory(ref: str) -> Any:
    """Import ``package.module:function``; errors name the reference."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"python factory {ref!r} must look like 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import module {module_name!r} of python factory {ref!r}: {exc}. "
            "Install the package or add its folder to PYTHONPATH."
        ) from None
    except SyntaxError as exc:
        raise ModelError(f"python factory {ref!r}: {exc.filename}:{exc.lineno}: syntax error ({exc.msg}).") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while it was imported
        raise ModelError(
            f"python factory {ref!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, attr):
        raise ModelError(f"module {module_name!r} has no attribute {attr!r} (python factory {ref!r}).")
    return getattr(module, attr)


@dataclass
class TaskModel:
    """``kind`` says how the module is built and stored (a Hugging Face folder, the built-in CNN, a Python
    factory); ``family`` names the plug-in in `compress.families` that answers what stages ask of it (set by the
    family that built or loaded it). ``transforms`` lists the structural changes applied since it was built
    (see `models/transforms.py`), re-applied in order on load. ``features`` are the module paths whose outputs
are its intermediate features (the family's default taps for hint losses and DisWOT)."""

    module: nn.Module
    kind: Kind
    modality: Modality
    num_labels: int
    tokenizer: Any = None
    spec: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    transforms: list[dict[str, Any]] = field(default_factory=list)
    features: list[str] = field(default_factory=list)  # the family's feature taps, input to output
    input_spec: InputSpec | None = None  # what it takes, set by its family (`Family.input_spec`)

    # ---- running -------------------------------------------------------------------------------
    def input_names(self) -> list[str]:
        return ["pixel_values"] if self.modality == "image" else ["input_ids", "attention_mask"]

    def spec_of_inputs(self) -> InputSpec:
        """Its input spec: its family's (set on adoption); before a family adopts it, what its input names say."""
        if self.input_spec is None:
            names = tuple(self.input_names())
            return InputSpec(names, sequence="input_ids" in names)
        return self.input_spec

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: batch[name] for name in self.input_names()}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits, on the device the batch is on (the model may be elsewhere: a bitsandbytes teacher on a GPU)."""
        inputs = self.inputs(batch)
        where = next(self.module.parameters()).device
        came_from = next(iter(inputs.values())).device
        if where != came_from:
            inputs = {k: v.to(where) for k, v in inputs.items()}
        out = self.module(**inputs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits if where == came_from else logits.to(came_from)

    def probe(self, batch: dict[str, torch.Tensor], where: str) -> None:
        """One forward pass on a real batch, so that a model that does not take the family's inputs or does not
        return one logit per class fails now, with the fix, instead of deep inside a training library."""
        names = self.input_names()
        shapes = ", ".join(f"{n} {tuple(batch[n].shape)}" for n in names if n in batch)
        try:
            with torch.no_grad():
                logits = self.logits(batch)
        except Exception as exc:  # noqa: BLE001 - the user's forward raised: name the contract it must meet
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(
                f"{where}: the model's forward fails on a real batch ({shapes}): {type(exc).__name__}: {first}. It "
                f"must accept {', '.join(names)} as keyword arguments and return logits (or an object with .logits)."
            ) from None
        want = (next(iter(batch.values())).shape[0], self.num_labels)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelError(
                f"{where}: the model returns {got} for a batch of {want[0]}; expected logits of shape {want} "
                f"({self.num_labels} classes in the data)."
            )

    def with_module(self, module: nn.Module) -> TaskModel:
        """The same task model around another module (a quantized or stripped copy)."""
        return dataclasses.replace(self, module=module)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def record(self, name: str, args: Any) -> None:
        """Record a structural change (a transform registered in `models/transforms.py`) for `load` to redo."""
        self.transforms = [*self.transforms, {"name": name, "args": args}]

    def has_transform(self, name: str) -> bool:
        return any(t.get("name") == name for t in self.transforms)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "family": self.family,
            "kind": self.kind,
            "modality": self.modality,
            "num_labels": self.num_labels,
            "spec": self.spec,
            "transforms": self.transforms,
        }
        if self.kind == "hf":
            self.module.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
        else:
            save_model(self.module, str(folder / "model.safetensors"))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> TaskModel:
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ModelError(f"{folder} is not a compress model folder (no {META_FILE}).")
        meta = json.loads(meta_path.read_text())
        if "kind" not in meta:
            raise ModelError(
                f"{folder} was saved by an older compress (no `kind` in {META_FILE}); run its recipe again."
            )
        kind, spec, transforms = meta["kind"], meta["spec"], meta.get("transforms") or []
        tokenizer = None
        if (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        if kind == "hf":
            import transformers
            from transformers import AutoConfig

            from compress.models import bnb

            auto = (transformers.AutoModelForCausalLM if meta["modality"] == "lm"
                    else transformers.AutoModelForSequenceClassification)  # fmt: skip
            if bnb.is_saved_bnb(folder):  # bitsandbytes weights: placed on the device their kernels run on
                module = auto.from_pretrained(folder, device_map=bnb.device())
            elif transforms:  # the skeleton from the config, the recorded changes, then the weights
                module = auto.from_config(AutoConfig.from_pretrained(folder))
                apply_transforms(module, transforms, str(folder))
                load_model(module, str(folder / "model.safetensors"))
            else:
                module = auto.from_pretrained(folder)
        else:
            module = build_module(kind, spec)
            apply_transforms(module, transforms, str(folder))
            load_model(module, str(folder / "model.safetensors"))
        module.eval()
        return cls(module, kind, meta["modality"], meta["num_labels"], tokenizer, spec, meta.get("family", ""),
                   transforms)  # fmt: skip


def build_module(kind: str, spec: dict[str, Any]) -> nn.Module:
    """Build a non-HF module from its spec (the built-in CNN, or a Python factory called with its kwargs)."""
    if kind == "cnn":
        from compress.models.cnn import CNN, CnnSpec

        return CNN(CnnSpec.model_validate(spec))
    if kind == "python":
        module = call_factory(spec["factory"], spec.get("kwargs", {}))
        if not isinstance(module, nn.Module):
            raise ModelError(f"python factory {spec['factory']!r} returned {type(module).__name__}, not an nn.Module.")
        return module
    raise ModelError(f"unknown model kind {kind!r}")


def call_factory(ref: str, kwargs: dict[str, Any]) -> Any:
    """Call a python factory with the recipe's ``kwargs``; arguments that do not fit its signature name it."""
    factory = import_factory(ref)
    if not callable(factory):
        raise ModelError(f"python factory {ref!r} is a {type(factory).__name__}, not a function or class.")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        try:
            sig = str(inspect.signature(factory))
        except (TypeError, ValueError):
            sig = "(...)"
        given = ", ".join(kwargs) or "none"
        raise ModelError(
            f"python factory {ref}{sig} cannot be called with the recipe's kwargs ({given}): {exc}. Set `kwargs` "
            "to the arguments it takes."
        ) from None
    except ValueError:
        pass  # no signature (a builtin): let the call decide
    try:
        return factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's code raised: name it, no traceback (--verbose has it)
        logging.getLogger("compress").debug("python factory %s raised", ref, exc_info=True)
        raise ModelError(f"python factory {ref!r} raised {type(exc).__name__}: {exc}") from None


def locate_factory(ref: str, kwargs: dict[str, Any] | None = None) -> str:
    """Where the code of a python factory is, found *without running it* (`compress validate` on a pull
    request must not execute the recipe's code): the module's file, compiled for syntax, and the factory's
    definition and keyword arguments checked on its syntax tree when it is a plain function."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"python factory {ref!r} must look like 'package.module:function'.")
    spec = None
    search: list[str] | None = None
    parts = module_name.split(".")
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        spec = sys.modules[name].__spec__ if name in sys.modules else PathFinder.find_spec(name, search)
        if spec is None:
            raise ModelError(
                f"cannot find module {name!r} of python factory {ref!r}. Install the package or add its folder "
                "to PYTHONPATH."
            )
        search = list(spec.submodule_search_locations or [])
    assert spec is not None
    origin = spec.origin
    if not origin or not origin.endswith(".py") or not Path(origin).is_file():
        return f"{module_name} ({origin or 'built in'})"
    source = Path(origin).read_bytes()
    try:
        tree = ast.parse(source, filename=origin)
    except SyntaxError as exc:
        raise ModelError(f"python factory {ref!r}: {origin}:{exc.lineno}: syntax error ({exc.msg}).") from None
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    assigned = {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom))
                for t in ([*n.targets] if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign)
                          else []) if isinstance(t, ast.Name)}  # fmt: skip
    imported = {(a.asname or a.name).split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names}  # fmt: skip
    if (
        attr not in defs
        and attr not in assigned
        and attr not in imported
        and not any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in tree.body)
    ):
        raise ModelError(f"module {module_name!r} ({origin}) defines no {attr!r} (python factory {ref!r}).")
    node = defs.get(attr)
    if isinstance(node, ast.FunctionDef) and kwargs is not None:
        a = node.args
        names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
        unknown = [k for k in kwargs if k not in names] if a.kwarg is None else []
        positional = [*a.posonlyargs, *a.args]
        with_default = {x.arg for x in positional[len(positional) - len(a.defaults) :]} | {
            x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None
        }
        needed = [n for n in names if n not in with_default and n not in kwargs]
        if unknown or needed:
            what = (
                f"takes no argument {', '.join(map(repr, unknown))}"
                if unknown
                else (f"needs {', '.join(map(repr, needed))}")
            )
            raise ModelError(
                f"python factory {ref} ({origin}:{node.lineno}) {what}; set `kwargs` to the arguments it takes "
                f"({', '.join(names) or 'none'})."
            )
    return f"{module_name} ({origin})"
