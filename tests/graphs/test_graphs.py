"""The graph strategies: what each kind of graph makes and refuses, asked the same way by the recipe checks and by
the stages, so the two cannot disagree."""

from __future__ import annotations

import pytest

from compress.errors import ExportError, QuantizationError
from compress.exporters.executorch import ExecuTorchOptions
from compress.families import FAMILIES
from compress.graphs import KvCacheGraph, LogitsGraph, TorchOnlyGraph
from compress.quant.ptq import PtqScheme


def test_each_family_deploys_its_kind_of_graph() -> None:
    assert FAMILIES.get("encoder").deploy_graph().name == "logits"
    assert FAMILIES.get("cnn").deploy_graph().name == "logits"
    assert FAMILIES.get("decoder").deploy_graph().name == "kv_cache"


def test_static_int8_is_left_out_of_a_moe_models_defaults_and_refused_when_listed() -> None:
    dense, moe = LogitsGraph(PtqScheme()), LogitsGraph(PtqScheme(), moe=True)
    assert dense.int8_modes(["dynamic", "static"], explicit=True, stage="export", model="m") == ["dynamic", "static"]
    assert moe.int8_modes(["dynamic", "static"], explicit=False, stage="export", model="m") == ["dynamic"]
    with pytest.raises(QuantizationError, match=r"^stages\[2\].int8: static int8 does not apply to 'm', a MoE model"):
        moe.int8_modes(["static"], explicit=True, stage="stages[2]", model="m")


def test_a_causal_lm_graph_refuses_what_it_cannot_make() -> None:
    graph = KvCacheGraph()
    assert graph.int8_modes(["dynamic", "static"], explicit=False, stage="export", model="lm") == ["dynamic"]
    with pytest.raises(QuantizationError, match=r"^quantize.int8: static int8 does not apply to 'lm', a causal LM .* "
                                                r"or `weights: \{bits: 4\}`"):  # fmt: skip
        graph.int8_modes(["static"], explicit=True, stage="quantize", model="lm")
    with pytest.raises(QuantizationError, match=r"^quantize.activations.ranges: dynamic emulates"):
        graph.check_qat(weight_bits=8, dynamic=True, stage="quantize")
    graph.check_qat(weight_bits=4, dynamic=False, stage="quantize")
    with pytest.raises(ExportError, match=r"^export.executorch.precisions: int8 ExecuTorch programs of causal LMs"):
        graph.check_executorch(ExecuTorchOptions(precisions=["fp32", "int8"]), "export.executorch")
    graph.check_executorch(ExecuTorchOptions(), "export.executorch")  # int8 by default only: left out, said


def test_a_model_without_a_graph_is_named_when_asked_for_one() -> None:
    graph = TorchOnlyGraph("is loaded with bitsandbytes")
    assert not graph.exports
    with pytest.raises(ExportError, match=r"export.models: 'big' is loaded with bitsandbytes, which does not export"):
        graph.export(None, "big", None, None, None)  # type: ignore[arg-type]
