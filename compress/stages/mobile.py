"""ExecuTorch/XNNPACK programs made by the `export` stage (`executorch:` options): one .pte per precision,
accuracy measured with ExecuTorch's own runtime, parity checked against the PyTorch model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compress.artifacts import Artifact
from compress.data.dataset import DataBundle
from compress.errors import ExportError
from compress.exporters.executorch import example_inputs, export_pte
from compress.models.task_model import TaskModel
from compress.recipe.base import Strict
from compress.stages.onnx_common import onnx_logits
from compress.training.evaluate import predict_logits

log = logging.getLogger("compress")
PtePrecision = Literal["fp32", "int8"]
PRECISIONS: tuple[PtePrecision, ...] = ("fp32", "int8")


class ExecuTorchOptions(Strict):
    """ExecuTorch programs delegated to XNNPACK (the mobile CPU backend), static shapes."""

    precisions: list[PtePrecision] = Field(
        default_factory=lambda: list(PRECISIONS),
        min_length=1,
        description="`fp32`, and `int8` (XNNPACK's PT2E quantizer: per-channel int8 weights, activations "
        "quantized at run time).",
    )
    batch: int = Field(1, gt=0, description="Batch size the program is exported for.")
    sequence: int = Field(128, gt=0, description="Sequence length of text programs (inputs padded to it).")
    max_abs_diff: float = Field(1e-3, gt=0, description="fp32 parity: max |logit difference| against PyTorch.")
    min_top1_agreement: float = Field(
        0.98, gt=0, le=1, description="int8 parity: top-1 agreement with the PyTorch model on the test split."
    )


def pte_artifacts(
    model: TaskModel, name: str, params: int | None, opts: ExecuTorchOptions, data: DataBundle, out_dir: Path,
    eval_batch_size: int,
) -> list[Artifact]:  # fmt: skip
    from compress.runtimes.executorch import EtPredictor

    sample = next(iter(data.test.loader(max(2, opts.batch))))
    args = example_inputs(model, opts.batch, opts.sequence, sample)
    ref = predict_logits(model, data.test, eval_batch_size, f"{name} reference logits").numpy()
    out = []
    for precision in opts.precisions:
        suffix = "xnnpack" if precision == "fp32" else "xnnpack-int8"
        path = out_dir / f"{name}.{suffix}.pte"
        ops = export_pte(model, args, path, int8=precision == "int8")
        logits = onnx_logits(EtPredictor(path, None, None), data.test, eval_batch_size, f"accuracy {path.name}")
        diff = float(np.abs(logits - ref).max())
        agreement = float((logits.argmax(-1) == ref.argmax(-1)).mean())
        bad = diff > opts.max_abs_diff if precision == "fp32" else agreement < opts.min_top1_agreement
        if bad:
            path.unlink()
            raise ExportError(
                f"{path.name}: ExecuTorch output differs from PyTorch (max |logit diff| {diff:.2e}, top-1 "
                f"agreement {agreement:.3f}; allowed {opts.max_abs_diff:g} / {opts.min_top1_agreement:g})."
            )
        metrics = {"accuracy": float((logits.argmax(-1) == data.test.labels.numpy()).mean()),
                   "parity_max_abs_diff": diff, "parity_top1_agreement": agreement}  # fmt: skip
        art = Artifact(path.name, "pte", path, "export", parent=name,
                       precision="fp32" if precision == "fp32" else "int8-dynamic", params=params, metrics=metrics,
                       info={"backend": "xnnpack", "operators": ops, "shape": list(args[0].shape)})  # fmt: skip
        delegated = ops.get("xnnpack_delegate", 0)
        portable = {k: v for k, v in ops.items() if k != "xnnpack_delegate"}
        log.info("%s: accuracy %.4f (ExecuTorch), %d XNNPACK subgraphs, %d ops left to portable kernels%s",
                 path.name, metrics["accuracy"], delegated, sum(portable.values()),
                 f" ({', '.join(sorted(portable))})" if portable else "")  # fmt: skip
        out.append(art.finalize())
    return out
