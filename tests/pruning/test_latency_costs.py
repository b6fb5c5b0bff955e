"""Latency targets: per-head and per-unit costs measured on the device, and the reachable range."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BertConfig

from compress.devices import resolve_device
from compress.errors import StageError
from compress.pruning.encoder_masks import GroupCosts
from compress.pruning.latency_costs import (
    LatencyCosts,
    corrected_fraction,
    costs_from_rounds,
    latency_fraction,
    measure_costs,
    predicted_ms,
)


def test_costs_are_measured_on_the_device(tmp_path: Path) -> None:
    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=64)  # fmt: skip
    lat = measure_costs(cfg, resolve_device("x86-cpu"), 32, tmp_path)
    assert lat.full_ms > 0 and lat.costs.per_head >= 0 and lat.costs.per_unit >= 0
    assert lat.costs.per_layer >= 0
    variable = lat.full_ms - lat.fixed_ms
    assert variable == pytest.approx(2 * (lat.costs.per_layer + 4 * lat.costs.per_head + 256 * lat.costs.per_unit))


def test_int8_costs_time_the_fused_dynamic_int8_graph(tmp_path: Path) -> None:
    """With an int8 deployment the timed graphs are the ones `int8: [dynamic]` deploys: fused attention as one
    integer kernel, integer matrix products."""
    from compress.quant.ort import integer_ops
    from compress.search.latency import TransformerLatency

    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=64)  # fmt: skip
    table = TransformerLatency(resolve_device("x86-cpu"), 32, cfg, tmp_path / "t.json", precision="int8")
    table.export_full({"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}, tmp_path / "m.onnx")
    ops = integer_ops(tmp_path / "m.onnx")
    assert ops.get("QAttention") == 2 and ops.get("MatMulInteger", 0) >= 4, ops
    lat = measure_costs(cfg, resolve_device("x86-cpu"), 32, tmp_path, precision="int8", statistic="p90")
    assert lat.full_ms > 0 and lat.costs.per_layer >= 0


def test_int8_costs_on_openvino_time_the_static_qdq_graph(tmp_path: Path) -> None:
    """On an OpenVINO device int8 is the static QDQ graph `int8: [static]` deploys (OpenVINO reads no onnxruntime
    contrib operators): every matrix product between Quantize/DequantizeLinear, read and timed by OpenVINO."""
    from compress.quant.ort import integer_ops
    from compress.runtimes.openvino import OpenVinoRuntime
    from compress.search.latency import TransformerLatency

    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=64)  # fmt: skip
    table = TransformerLatency(resolve_device("openvino-cpu"), 32, cfg, tmp_path / "t.json", precision="int8")
    path = tmp_path / "m.onnx"
    table.export_full({"layers": 2, "hidden": 64, "heads": 2, "ffn": 128}, path)
    ops = integer_ops(path)
    assert "QAttention" not in ops and ops.get("QuantizeLinear", 0) >= 8 and ops.get("DequantizeLinear", 0) >= 8, ops
    assert not path.with_suffix(".fp32.onnx").exists()
    assert OpenVinoRuntime().unsupported(path) is None
    [[ms]] = table.measure([path], 1, runs=5, warmup=1)
    assert ms > 0


def test_latency_budget_becomes_a_fraction_of_the_variable_part() -> None:
    lat = LatencyCosts(GroupCosts(per_head=0.1, per_unit=0.001), fixed_ms=1.0, full_ms=3.0)
    assert latency_fraction(lat, 2.0) == pytest.approx(0.5)
    assert predicted_ms(lat, 0.25) == pytest.approx(1.5)  # 1 ms fixed + a quarter of the 2 variable ms
    assert predicted_ms(lat, latency_fraction(lat, 2.4)) == pytest.approx(2.4)  # the prediction inverts the target
    with pytest.raises(StageError, match=r"^prune.target.latency_ms: 0.800 ms cannot be reached: .* 1.000 ms of it"):
        latency_fraction(lat, 0.8)
    with pytest.raises(StageError, match="already measures 3.000 ms"):
        latency_fraction(lat, 4.0)
    with pytest.raises(StageError, match=r"^prune.target.speedup \(8x\): 0.800 ms cannot be reached"):
        latency_fraction(lat, 0.8, key="prune.target.speedup (8x)")  # a speed-up's error names its own key


def test_costs_from_rounds_slopes_and_a_speedups_quiet_reference() -> None:
    base = {"layers": 2, "hidden": 64, "heads": 4, "ffn": 100}
    archs = [base, {**base, "heads": 2}, {**base, "ffn": 50}, {**base, "layers": 1}]
    # round 2 is a slow phase: everything 1.5x slower, the reference (a larger graph) 2x
    full, heads, units, layer = [10.0, 15.0, 10.0], [9.0, 13.5, 9.0], [8.0, 12.0, 8.0], [6.0, 9.0, 6.0]
    lat = costs_from_rounds([full, heads, units, layer], archs, reference=False)
    assert lat.full_ms == pytest.approx(10.0) and lat.reference_ms is None
    assert lat.costs.per_head == pytest.approx(1.0 / (2 * 2))  # 1 ms for 2 heads in each of 2 layers
    assert lat.costs.per_unit == pytest.approx(2.0 / (2 * 50))
    # 4 ms for one layer, of which 4 heads (1 ms) and 100 units (2 ms) are already counted
    assert lat.costs.per_layer == pytest.approx(1.0)
    assert lat.fixed_ms == pytest.approx(10.0 - 2 * (1.0 + 4 * 0.25 + 100 * 0.02))
    # with a reference both are their fastest round: the slow round's 2x/1.5x would overstate the speed-up
    quiet = costs_from_rounds([full, heads, units, layer, [80.0, 160.0, 81.0]], archs, reference=True)
    assert quiet.reference_ms == pytest.approx(80.0) and quiet.full_ms == pytest.approx(10.0)
    assert quiet.costs.per_head == pytest.approx(lat.costs.per_head)


def test_a_correction_carries_the_measured_error_over() -> None:
    lat = LatencyCosts(GroupCosts(per_head=0.1, per_unit=0.001), fixed_ms=1.0, full_ms=3.0)
    # kept 0.5 -> predicted 2.0 ms; it measured 1.6 (20% under): 1.9 ms needs a prediction of 1.9 * 2.0 / 1.6
    assert corrected_fraction(lat, 0.5, 1.6, 1.9) == pytest.approx((1.9 * 2.0 / 1.6 - 1.0) / 2.0)  # 0.6875
    assert corrected_fraction(lat, 0.5, 2.5, 1.9) == pytest.approx((1.9 * 2.0 / 2.5 - 1.0) / 2.0)  # over: 0.26
    assert corrected_fraction(lat, 0.5, 1.0, 9.0) == 1.0 and corrected_fraction(lat, 0.5, 9.0, 1.0) == 0.01


def test_a_pruned_model_is_timed_in_turns_with_the_unpruned_shape(tmp_path: Path) -> None:
    """The closed loop's measurement: the pruned encoder (per-layer head and unit counts, a removed layer) exported
    as deployed (fused dynamic int8) and timed against the unpruned shape, scaled by the costs' full ms."""
    import statistics

    import torch
    from transformers import BertForSequenceClassification

    from compress.pruning.encoder_masks import EncoderMasks
    from compress.pruning.latency_costs import COST_ROUNDS, measure_pruned
    from compress.pruning.physical import prune_encoder

    cfg = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    masks = EncoderMasks(model)
    with torch.no_grad():
        masks.heads[0].log_alpha[:2] = -20.0
        masks.units[2].log_alpha[:128] = -20.0
        masks.whole_layers.log_alpha[1] = -20.0
    pruned = BertForSequenceClassification(BertConfig(**cfg.to_dict()))
    pruned.load_state_dict(model.state_dict())
    assert prune_encoder(pruned, masks.deterministic())["removed_layers"] == [1]
    lat = LatencyCosts(GroupCosts(per_head=0.1, per_unit=0.001), fixed_ms=1.0, full_ms=4.0)
    ms, ratios = measure_pruned(pruned, cfg, resolve_device("x86-cpu"), 32, tmp_path, lat, precision="int8")
    assert len(ratios) == COST_ROUNDS and all(r > 0 for r in ratios)
    assert ms == pytest.approx(4.0 * statistics.median(ratios))
