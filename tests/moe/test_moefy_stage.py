"""The moefy stage on real SST-2 slices: conversion, policy search, reload, ONNX export matching PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compress import pipeline
from compress.errors import CompressError
from compress.families import load as load_model
from compress.moe.experts import MoeFfn
from tests.conftest import text_recipe_head, write_recipe

RECIPE = (
    text_recipe_head("moe-sst2")
    + """stages:
  - stage: finetune
    max_steps: 16
    batch_size: 16
    lr: 1.0e-3
  - stage: moefy
    experts: 4
    calibration_tokens: 2000
    router: {{steps: 60, batch_tokens: 512}}
    policy: {policy}
  - stage: export
    models: [teacher.moe]
    int8: [dynamic]
"""
)


@pytest.mark.parametrize("pol", ["{max_accuracy_drop: 2.0, eval_samples: 64}", "{kind: threshold, threshold: 0.8}"])
def test_moefy_converts_searches_reloads_and_exports(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path,
                                                     pol: str) -> None:  # fmt: skip
    recipe = write_recipe(tmp_path, RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, policy=pol))
    result = pipeline.run(recipe, tmp_path / "out")
    art = result.artifacts["teacher.moe"]
    moe = art.info["moe"]
    assert len(moe["layers"]) == 4 and all(lay["all_experts_max_abs_diff"] < 1e-4 for lay in moe["layers"])
    assert all(lay["router_last_loss"] < lay["router_first_loss"] for lay in moe["layers"])
    assert moe["activated"]["active_ffn_params"] <= moe["activated"]["dense_ffn_params"] * 1.01
    if "threshold" in pol:
        assert all(lay["policy"] == "threshold 0.8" for lay in moe["layers"])
    else:  # the search stayed within its budget on the dev subset
        search = moe["policy_search"]
        assert 100 * (search["dense_dev_accuracy"] - search["dev_accuracy"]) <= 2.0 + 1e-9
    reloaded = load_model(art.path)  # the MoE layers come back with their policies
    layers = [m for m in reloaded.module.modules() if isinstance(m, MoeFfn)]
    want = [(int(lay["policy"][4:]), None) if lay["policy"].startswith("top-") else (4, float(lay["policy"][10:]))
            for lay in moe["layers"]]  # fmt: skip
    assert [(m.top_k, m.threshold) for m in layers] == want
    exported = result.artifacts["teacher.moe.onnx"]
    assert exported.metrics["parity_top1_agreement"] == 1.0 and exported.metrics["parity_max_abs_diff"] < 1e-4
    ops = {n.op_type for n in onnx.load(str(exported.path)).graph.node}
    if any(not lay["policy"].startswith("top-4") for lay in moe["layers"]):
        assert {"NonZero", "Gather"} <= ops  # tokens grouped per expert in the graph
    assert np.isclose(exported.metrics["accuracy"], art.metrics["accuracy"], atol=0.02)
    assert result.artifacts["teacher.moe.int8-dynamic.onnx"].info["integer_ops"]  # int8 applies to MoE graphs
    md = (tmp_path / "out" / "report.md").read_text()  # the report shows policy and active params per layer
    assert "## MoEfication: `teacher.moe`" in md and "| bert.encoder.layer.0 | " in md


@pytest.mark.parametrize("experts,tokens,match", [
    (5, 2000, r"moefy.experts: 5 experts do not split the FFN's 64 neurons"),
    (128, 2000, r"moefy.experts: 128 experts do not split"),
    (4, 10_000_000, r"moefy.calibration_tokens: 10000000 tokens needed .* but the training split has"),
    (4, 2000, r"moefy.policy.min_tokens: only 0 dev examples have 500 tokens or more"),
])  # fmt: skip
def test_bad_settings_fail_before_work(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path, experts: int,
                                       tokens: int, match: str) -> None:  # fmt: skip
    pol = "{min_tokens: 500}" if "min_tokens" in match else "{top_k: 2}"
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, policy=pol)
    text = text.replace("experts: 4", f"experts: {experts}").replace("calibration_tokens: 2000",
                                                                     f"calibration_tokens: {tokens}")  # fmt: skip
    with pytest.raises(CompressError, match=match):
        pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    assert not list((tmp_path / "out").glob("*-moefy-*"))
