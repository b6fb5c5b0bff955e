from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from compress.errors import ModelError
from compress.families import load as load_model
from compress.models.bert import default_layer_map
from compress.models.cnn import CNN, CnnSpec
from compress.models.source import ModelSource, build_model
from compress.models.task_model import TaskModel


@pytest.mark.parametrize("block", ["plain", "resnet", "mbv2"])
def test_cnn_family_shapes_and_reload(block: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = CnnSpec(widths=[8, 16, 24], depths=[1, 2, 1], block=block, kernel=5, in_channels=3, num_classes=7)
    model = TaskModel(CNN(spec).eval(), "cnn", "image", 7, spec=spec.model_dump())
    x = torch.randn(2, 3, 16, 16)
    out = model.logits({"pixel_values": x})
    assert out.shape == (2, 7)
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.equal(again.logits({"pixel_values": x}), out)
    assert again.family == "cnn" and again.features == ["stages.0", "stages.1", "stages.2"]


def test_cnn_spec_rejects_inconsistent_shapes() -> None:
    with pytest.raises(ValidationError, match="depths has 1 entries but widths has 2"):
        CnnSpec(widths=[8, 16], depths=[1])
    with pytest.raises(ValidationError, match="odd"):
        CnnSpec(kernel=4)


def test_hf_model_round_trip_keeps_tokenizer(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = build_model(
        ModelSource(hf=str(tiny_bert_dir)), modality="text", num_labels=3, in_channels=None, base_dir=Path(".")
    )
    assert model.module.config.num_labels == 3  # a fresh 3-way head on a 2-way checkpoint
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    batch = again.tokenizer(["a fine film"], return_tensors="pt")
    b = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    assert torch.allclose(model.logits(b), again.logits(b))
    assert again.family == "encoder" and again.features == [f"bert.encoder.layer.{i}" for i in range(4)]


def test_layer_map_and_bad_sources(tmp_path: Path) -> None:
    assert default_layer_map(3, 6) == [1, 3, 5]
    assert default_layer_map(2, 12) == [5, 11]
    with pytest.raises(ModelError, match="does not exist"):
        build_model(
            ModelSource(hf="./missing/model"), modality="text", num_labels=2, in_channels=None, base_dir=tmp_path
        )
    with pytest.raises(ModelError, match="need a Hugging Face BERT-family teacher"):
        build_model(
            ModelSource(bert={"layers": 2}),
            modality="text",
            num_labels=2,
            in_channels=None,  # type: ignore[arg-type]
            base_dir=tmp_path,
        )


def test_model_code_in_a_folder_never_runs_unless_the_recipe_opts_in(tmp_path: Path) -> None:
    """A Hugging Face folder (or hub repo) may ship Python code for a custom architecture; loading it must not
    run that code unless the recipe says `trust_remote_code: true`."""
    import json

    marker = tmp_path / "ran"
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil-net", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "modeling_evil.EvilConfig",
                     "AutoModelForSequenceClassification": "modeling_evil.EvilModel"},
    }))  # fmt: skip
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('code ran')\n")
    source = ModelSource(hf=str(folder))
    assert source.trust_remote_code is False
    with pytest.raises(ModelError, match="cannot load Hugging Face model"):
        build_model(source, modality="image", num_labels=2, in_channels=None, base_dir=tmp_path)
    assert not marker.exists()
    with pytest.raises(ValidationError, match="`trust_remote_code` applies to `hf` and `hf_package` models only"):
        ModelSource(cnn=CnnSpec(widths=[8]), trust_remote_code=True)
