"""MatMulNBits writer: 4-bit integers packed as onnxruntime expects, exact against PyTorch on the same grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress.errors import QuantizationError
from compress.quant import nbits


def test_pack_round_trips_with_padding() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, size=(5, 40)).astype(np.int8)
    block = nbits.block_size(40)
    assert block == 64
    b = nbits.pack(q, block)
    assert b.shape == (5, 1, 32) and b.dtype == np.uint8
    np.testing.assert_array_equal(nbits.unpack(b, 40), q)
    assert nbits.block_size(384) == 128 and nbits.block_size(8) == 16


def _grid_mlp(seed: int) -> tuple[torch.nn.Module, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """An MLP whose Linear weights lie on a per-row 4-bit grid, with those steps."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(48, 32), torch.nn.GELU(), torch.nn.Linear(32, 6)).eval()
    weights = {}
    with torch.no_grad():
        for name in ("0.weight", "2.weight"):
            w = model.get_parameter(name)
            step = w.abs().amax(dim=1) / 7
            w.copy_(torch.clamp(torch.round(w / step[:, None]), -8, 7) * step[:, None])
            weights[name] = (w.numpy().copy(), step.numpy())
    return model, weights


def _export(model: torch.nn.Module, path: Path) -> None:
    x = torch.randn(2, 48)
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)  # fmt: skip


@pytest.mark.parametrize("level", [0, 4])
def test_matmulnbits_matches_pytorch(tmp_path: Path, level: int) -> None:
    model, weights = _grid_mlp(0)
    path = tmp_path / "mlp.onnx"
    _export(model, path)
    result = nbits.store_4bit_weights(path, weights, accuracy_level=level)
    assert len(result.converted) == 2 and not result.skipped
    x = torch.randn(16, 48)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("MatMulNBits") == 2
    got = sess.run(None, {"x": x.numpy()})[0]
    # level 0 dequantizes to float: exact up to summation order; level 4 quantizes activations to int8 per block
    tol = 1e-5 if level == 0 else 0.05 * np.abs(ref).max()
    assert np.abs(got - ref).max() < tol


def test_weight_off_its_grid_is_an_error(tmp_path: Path) -> None:
    model, weights = _grid_mlp(1)
    w, step = weights["0.weight"]
    with torch.no_grad():
        model.get_parameter("0.weight").add_(0.3 * torch.from_numpy(step)[:, None])
    off = model.get_parameter("0.weight").detach().numpy().copy()
    path = tmp_path / "mlp.onnx"
    _export(model, path)
    with pytest.raises(QuantizationError, match="0.weight: weight is not on its 4-bit grid"):
        nbits.store_4bit_weights(path, {"0.weight": (off, step)})


def test_unmatched_weights_stay_float(tmp_path: Path) -> None:
    model, weights = _grid_mlp(2)
    path = tmp_path / "mlp.onnx"
    _export(model, path)
    result = nbits.store_4bit_weights(path, {"2.weight": weights["2.weight"]})
    assert len(result.converted) == 1 and len(result.skipped) == 1
