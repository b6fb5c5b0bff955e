"""Hugging Face models loaded with bitsandbytes (8-bit LLM.int8 or 4-bit NF4): teachers too big for memory in
fp32, used forward-only by distillation. bitsandbytes >= 0.50 runs 8-bit and NF4 on the CPU as well as on CUDA
GPUs; a probe forward at load time turns a mode that cannot run here into a clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from compress.errors import ModelError

BnbMode = Literal["int8", "nf4"]


def quantization_config(mode: BnbMode) -> Any:
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    # The classification head stays float: it is tiny, and bitsandbytes' CPU NF4 kernels cannot run a layer with
    # fewer than 32 outputs (one per class here).
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                              llm_int8_skip_modules=list(_FLOAT_HEADS))  # fmt: skip


_FLOAT_HEADS = ("classifier", "score")  # Hugging Face's names for a sequence classifier's head


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_bnb(module: nn.Module) -> bool:
    """Whether ``module`` holds bitsandbytes layers (frozen: they cannot be trained or exported to ONNX)."""
    return (
        getattr(module, "quantization_method", None) is not None
        or getattr(getattr(module, "config", None), "quantization_config", None) is not None
    )


def load(path: str, mode: BnbMode, num_labels: int | None, *, key: str = "teacher.bitsandbytes") -> nn.Module:
    """``path`` loaded with bitsandbytes `mode`, checked by one forward pass on this machine's device; errors
    name the recipe ``key`` that asked for it. ``num_labels`` None: a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    where = device()
    try:
        if num_labels is None:
            module = AutoModelForCausalLM.from_pretrained(
                path, quantization_config=quantization_config(mode), device_map=where
            )
        else:
            module = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, quantization_config=quantization_config(mode), device_map=where
            )
        if mode == "nf4" and where == "cpu":
            _check_cpu_nf4_widths(module, key)
        ids = torch.full((1, 16), 5, dtype=torch.long, device=where)
        with torch.no_grad():
            module(input_ids=ids, attention_mask=torch.ones_like(ids))
    except ImportError as exc:
        raise ModelError(f"{key}: {exc}. Install with: pip install accelerate bitsandbytes") from None
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - bitsandbytes kernels fail with assorted errors on unsupported shapes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"{key}: {mode} cannot run {path} on {where} ({type(exc).__name__}: {first}). Check that it is a "
            "Hugging Face model folder and that bitsandbytes >= 0.50 (CPU kernels for int8 and NF4) is installed"
            + ("." if where == "cpu" else ", built for this GPU.")
        ) from None
    return module.eval()


# bitsandbytes' CPU inference path for 4-bit weights (AVX-512 BF16 kernels) repacks each weight in blocks of 64
# inputs and 32 outputs, and fails on a layer whose widths are not multiples of those (bitsandbytes 0.50.2).
_NF4_BLOCK_IN, _NF4_BLOCK_OUT = 64, 32


def _check_cpu_nf4_widths(module: nn.Module, key: str) -> None:
    """Name the layers bitsandbytes' CPU NF4 kernels cannot run, instead of its reshape error at the first
    forward pass."""
    bad = [
        f"{name} ({int(m.in_features)} -> {int(m.out_features)})"
        for name, m in module.named_modules()
        if type(m).__name__ == "Linear4bit" and getattr(m, "support_avx512bf16_for_cpu", False)
        and (int(m.in_features) % _NF4_BLOCK_IN or int(m.out_features) % _NF4_BLOCK_OUT)
    ]  # fmt: skip
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelError(
            f"{key}: nf4 on this CPU (bitsandbytes' AVX-512 BF16 kernels) needs layers with a multiple of "
            f"{_NF4_BLOCK_IN} inputs and of {_NF4_BLOCK_OUT} outputs; {shown} are not. Use `int8`, or run on a GPU."
        )


def is_saved_bnb(folder: Path) -> bool:
    """Whether a saved Hugging Face folder holds bitsandbytes weights (its config names the quantization)."""
    cfg = folder / "config.json"
    return cfg.is_file() and "quantization_config" in json.loads(cfg.read_text())


def float_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with bitsandbytes weights dequantized to float32, in the layout of the float model
    (to initialise a float student from a quantized teacher's layers)."""
    state = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        if type(sub).__name__ == "Linear4bit":
            import bitsandbytes.functional as bnb_f

            out[f"{name}.weight"] = bnb_f.dequantize_4bit(sub.weight.data, sub.weight.quant_state).float().cpu()
    for key, value in state.items():
        if key in out or key.endswith((".SCB", ".weight_format")) or ".weight." in key:  # int8 / 4-bit state
            continue
        base = key[: -len("weight")]
        if key.endswith(".weight") and base + "SCB" in state:  # LLM.int8: row-wise absmax scales
            value = value.float() * state[base + "SCB"][:, None].float() / 127
        out[key] = value
    return out
