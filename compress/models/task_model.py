"""A classification model plus what is needed to feed, save and rebuild it (tokenizer, family, spec)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from compress.errors import ModelError

Family = Literal["hf", "cnn", "python"]
Modality = Literal["text", "image"]
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
    if not hasattr(module, attr):
        raise ModelError(f"module {module_name!r} has no attribute {attr!r} (python factory {ref!r}).")
    return getattr(module, attr)


@dataclass
class TaskModel:
    module: nn.Module
    family: Family
    modality: Modality
    num_labels: int
    tokenizer: Any = None
    spec: dict[str, Any] = field(default_factory=dict)

    # ---- running -------------------------------------------------------------------------------
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] if self.modality == "text" else ["pixel_values"]

    def inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: batch[name] for name in self.input_names()}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = self.inputs(batch)
        where = next(self.module.parameters()).device
        if where.type != "cpu":  # a model placed on a GPU (bitsandbytes); batches are built on the CPU
            inputs = {k: v.to(where) for k, v in inputs.items()}
        out = self.module(**inputs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits if where.type == "cpu" else logits.cpu()  # training and losses run on the CPU

    def with_module(self, module: nn.Module) -> TaskModel:
        """The same task model around another module (a quantized or stripped copy)."""
        return dataclasses.replace(self, module=module)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def default_feature_modules(self) -> list[str]:
        """Module paths whose outputs are the model's intermediate features, input to output."""
        names = [n for n, _ in self.module.named_modules()]
        if self.family == "cnn":
            return [n for n in names if n.startswith("stages.") and n.count(".") == 1]
        if self.family == "hf":
            return [n for n in names if n.split(".")[-2:-1] == ["layer"] and ".encoder." in f".{n}"]
        return []

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "family": self.family,
            "modality": self.modality,
            "num_labels": self.num_labels,
            "spec": self.spec,
        }
        if self.family == "hf":
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
        family, spec = meta["family"], meta["spec"]
        tokenizer = None
        if (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
        if family == "hf":
            from transformers import AutoModelForSequenceClassification

            from compress.models import bnb
            from compress.models.structure import load_structured

            if bnb.is_saved_bnb(folder):  # bitsandbytes weights: placed on the device their kernels run on
                module = AutoModelForSequenceClassification.from_pretrained(folder, device_map=bnb.device())
            else:
                module = load_structured(folder) or AutoModelForSequenceClassification.from_pretrained(folder)
        else:
            module = build_module(family, spec)
            if spec.get("pruned_shapes"):
                from compress.pruning.channels import apply_shapes

                apply_shapes(module, spec["pruned_shapes"])
            load_model(module, str(folder / "model.safetensors"))
        module.eval()
        return cls(module, family, meta["modality"], meta["num_labels"], tokenizer, spec)


def build_module(family: str, spec: dict[str, Any]) -> nn.Module:
    """Rebuild a non-HF module from its saved spec."""
    if family == "cnn":
        from compress.models.cnn import CNN, CnnSpec

        return CNN(CnnSpec.model_validate({k: v for k, v in spec.items() if k != "pruned_shapes"}))
    if family == "python":
        module = import_factory(spec["factory"])(**spec.get("kwargs", {}))
        if not isinstance(module, nn.Module):
            raise ModelError(f"python factory {spec['factory']!r} returned {type(module).__name__}, not an nn.Module.")
        return module
    raise ModelError(f"unknown model family {family!r}")
