"""Chains of stages as users write them, smallest models that show each link: the recipe's promise is that any
sensible order runs, each device measures what its runtime runs, and budgets hold where the format runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import QuantizationError
from compress.families import family_of, load
from tests.conftest import TINY_FINETUNE, text_recipe_head, write_recipe

pytest.importorskip("executorch")
pytest.importorskip("openvino")

SEARCH_TO_PROFILE = (
    text_recipe_head("chain-text")
    + "stages:\n"
    + TINY_FINETUNE
    + """  - stage: search
    method: diswot
    space: {{layers: [2], hidden: [32], heads: [2, 4], ffn: [32, 64]}}
    budget: {{max_params: 2.0e6}}
    batch_size: 16
  - stage: distill
    max_steps: 4
    batch_size: 16
  - stage: prune
    source: student
    target: {{params: 0.6}}
    max_steps: 8
    batch_size: 16
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {{max_steps: 2, batch_size: 16}}
  - stage: quantize
    method: qat
    source: student
    max_steps: 2
    batch_size: 16
  - stage: export
    models: [student]
    int8: [dynamic]
    executorch: {{sequence: 32, precisions: [fp32]}}  # int8 programs: tests/runtimes/test_executorch.py
  - stage: profile
    devices: [x86-cpu, openvino-cpu, executorch-xnnpack]
    shape: {{batch: 1, sequence: 32}}
    runs: 10
    warmup: 1
    top_ops: 0
budgets:
  x86-cpu: {{p50_ms: 1000, accuracy_drop: 100}}
  openvino-cpu: {{p50_ms: 1000, accuracy_drop: 100}}
  executorch-xnnpack: {{p50_ms: 1000}}
"""
)


def test_search_distill_prune_qat_export_profile_on_three_runtimes(
    tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path
) -> None:
    recipe = write_recipe(tmp_path, SEARCH_TO_PROFILE.format(data=sst2_slice, teacher=tiny_bert_dir))
    result = pipeline.run(recipe, tmp_path / "out")
    arts = result.artifacts
    pruning = arts["student"].info["pruning"]
    assert pruning["layer_map"] == [1, 3]  # the 2-layer searched student was sliced from teacher layers 1 and 3
    assert arts["student"].params < pruning["params_before"]  # pruned for real, after distillation
    for name, art in arts.items():
        measured = set(art.latency)
        if art.kind == "pte":
            assert measured == {"executorch-xnnpack"}, name
        elif art.kind == "onnx":
            assert "executorch-xnnpack" not in measured and "x86-cpu" in measured, name
    assert "openvino-cpu" in arts["student.onnx"].latency and "openvino-cpu" in arts["student.int8-qat.onnx"].latency
    checks = result.report["budgets"]
    assert checks and all(c["status"] == "ok" for c in checks)
    # accuracy on OpenVINO's own kernels, measured by the profile stage, is what the openvino-cpu budget checks
    on_ov = {n: a.info["accuracy_on"]["openvino-cpu"] for n, a in arts.items() if "accuracy_on" in a.info}
    assert set(on_ov) == {n for n, a in arts.items() if "openvino-cpu" in a.latency and "accuracy" in a.metrics}
    assert abs(on_ov["student.onnx"] - arts["student.onnx"].metrics["accuracy"]) <= 0.05  # fp32: the same model
    rows = {r["name"]: r for r in result.report["artifacts"]}
    teacher_acc = rows.get("teacher.onnx", rows["teacher"])["metrics"]["accuracy"]
    drops = {c["artifact"]: c["measured"] for c in checks if c["device"] == "openvino-cpu"
             and c["limit"] == "accuracy_drop"}  # fmt: skip
    assert drops and set(drops) <= set(on_ov)
    assert all(d == pytest.approx(100 * (teacher_acc - on_ov[n])) for n, d in drops.items())
    shipped = next(h for h in result.report["headline"] if h["device"] == "openvino-cpu")  # the summary agrees
    assert shipped["accuracy"] == on_ov[shipped["artifact"]]
    assert not [c for c in checks if c["artifact"].endswith(".pte") and c["device"] != "executorch-xnnpack"]
    assert not [c for c in checks if c["artifact"].endswith(".onnx") and c["device"] == "executorch-xnnpack"]


MOE_TO_PROFILE = (
    text_recipe_head("chain-moe")
    + """stages:
  - stage: finetune
    max_steps: 8
    batch_size: 16
    lr: 1.0e-3
  - stage: moefy
    experts: 4
    calibration_tokens: 2000
    router: {{steps: 20, batch_tokens: 512}}
    policy: {{top_k: 2}}
  - stage: quantize
    method: ptq
    source: teacher.moe
{int8}  - stage: export
    models: [teacher.moe]
  - stage: profile
    devices: [x86-cpu]
    shape: {{batch: 1, sequence: 32}}
    runs: 10
    warmup: 1
    top_ops: 0
"""
)


def test_finetune_moefy_ptq_export_profile(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    """Static int8 cannot calibrate token-grouped experts: by default a MoE model gets dynamic int8 only, and an
    explicit `static` is refused before any work."""
    text = MOE_TO_PROFILE.format(data=sst2_slice, teacher=tiny_bert_dir, int8="")
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    names = set(result.artifacts)
    assert {"teacher.moe.int8-dynamic.onnx", "teacher.moe.onnx"} <= names
    assert not [n for n in names if "static" in n]
    assert all(result.artifacts[n].latency.get("x86-cpu") for n in names if n.endswith(".onnx"))
    explicit = MOE_TO_PROFILE.format(data=sst2_slice, teacher=tiny_bert_dir, int8="    int8: [static]\n")
    with pytest.raises(Exception, match=r"stages\[2\].int8: static int8 does not apply to 'teacher.moe'"):
        pipeline.validate(write_recipe(tmp_path, explicit, "explicit.yaml"))
    # the run-time guard behind the check: the MoE model's own graph refuses an explicit static int8 ...
    moe = load(result.artifacts["teacher.moe"].path)
    graph = family_of(moe).graph(moe)
    with pytest.raises(QuantizationError, match="static int8 does not apply to 'teacher.moe'"):
        graph.int8_modes(["dynamic", "static"], explicit=True, stage="quantize", model="teacher.moe")
    assert graph.int8_modes(["dynamic", "static"], explicit=False, stage="quantize", model="x") == ["dynamic"]
    # ... and a chain that only moefies and quantizes the teacher still says what to ship
    [item] = result.report["headline"]
    assert item["artifact"].startswith("teacher.moe")
    assert (tmp_path / "out" / "ship" / "x86-cpu" / "model.onnx").is_file()
