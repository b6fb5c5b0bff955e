"""The `cnn` family end to end on digits: one recipe runs every stage method the family claims (the list is
checked against its capabilities, so a new capability needs a run here)."""

from __future__ import annotations

from pathlib import Path

from compress import pipeline
from compress.families import FAMILIES, load
from tests.conftest import digits_recipe_head, write_recipe

# capability -> the stage block below that exercises it
RUNS = {
    "search:diswot": "search",
    "search:latency": "search (budget.max_latency_ms)",
    "prune:dphubert": "prune (dphubert)",
    "prune:torch_pruning": "prune (torch_pruning)",
    "quantize:qat": "quantize (qat)",
    "quantize:ptq": "quantize (ptq)",
    "quantize:budget": "quantize (budget)",
    "export": "export",
}
RECIPE = (
    digits_recipe_head("cnn-family").replace("epochs: 3", "epochs: 2")
    + """  - stage: search
    method: diswot
    space: {block: [resnet], stages: [2], depth: [1], width: [8, 16], kernel: [3]}
    budget: {max_params: 2.0e4, max_latency_ms: 50}
    evolution: {population: 4, generations: 1}
    batch_size: 32
    top_k: 2
  - stage: distill
    epochs: 1
    batch_size: 64
    lr: 3.0e-3
  - stage: prune
    method: dphubert
    source: student
    target: {params: 0.7}
    max_steps: 20
    batch_size: 64
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {max_steps: 4, batch_size: 64}
  - stage: prune
    method: torch_pruning
    source: teacher
    output: teacher.tp
    target: {flops: 0.6}
    recovery_steps: 2
    max_steps: 4
    batch_size: 64
  - stage: quantize
    method: qat
    source: student
    max_steps: 4
    batch_size: 64
  - stage: quantize
    method: ptq
    source: teacher.tp
    int8: [dynamic]
  - stage: quantize
    method: budget
    source: teacher
    accuracy_drop: 100
    order: [dynamic]
  - stage: export
    models: [student, teacher.tp]
    int8: []
"""
)


def test_every_stage_the_cnn_family_supports_runs_on_digits(tmp_path: Path) -> None:
    cnn = FAMILIES.get("cnn")
    assert set(RUNS) == set(cnn.capabilities), "a capability without a run here (or a run without one)"
    result = pipeline.run(write_recipe(tmp_path, RECIPE), tmp_path / "out")
    arts = result.artifacts
    teacher, student, pruned = (load(arts[n].path) for n in ("teacher", "student", "teacher.tp"))
    assert {m.family for m in (teacher, student, pruned)} == {"cnn"}
    assert student.spec.get("widths") is not None and student.num_params() < teacher.num_params()
    assert arts["student"].info["pruning"]["params_before"] > arts["student"].params  # searched, distilled, pruned
    assert pruned.num_params() < teacher.num_params()
    assert [t["name"] for t in pruned.transforms] == ["channel_shapes"]
    assert arts["teacher.int8-dynamic.onnx"].info["quantize_budget"]["chosen"] == "dynamic"
    for name in ("student.int8-qat.onnx", "teacher.tp.int8-dynamic.onnx", "student.onnx", "teacher.tp.onnx"):
        assert name in arts, sorted(arts)
        assert arts[name].metrics["accuracy"] > 0.3, (name, arts[name].metrics)
