"""The family interface: every registered family declares a consistent contract, a capability it lacks is a
clear error naming the family and the fix, loading re-adopts a saved model, and stages never test a model's
kind, family or modality themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compress.errors import ModelError
from compress.families import FAMILIES, family_for, family_of, load
from compress.families.methods import HIDDEN_STATES, METHODS, MOEFY, PRUNE_DPHUBERT
from compress.models.cnn import CnnSpec
from compress.models.source import ModelSource
from compress.models.task_model import TaskModel

STAGES = Path(__file__).resolve().parents[2] / "compress" / "stages"


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_declares_a_consistent_contract(name: str) -> None:
    family = FAMILIES.get(name)
    assert family.name == name and family.summary and family.kinds
    assert set(family.capabilities) <= set(METHODS), set(family.capabilities) - set(METHODS)
    for kind in family.kinds:
        assert family_for(kind, family.modality, "test") is family
    searches = family.supports("search:diswot") or family.supports("search:autodistil")
    assert (family.space_kind is not None) == searches


def test_no_two_families_claim_the_same_models() -> None:
    claims = [(k, f.modality) for _, f in FAMILIES.items() for k in f.kinds]
    assert len(claims) == len(set(claims))


def test_a_model_no_family_takes_is_refused_with_the_families_listed() -> None:
    listed = r"\(families: .*cnn: CNN image classifiers \(cnn, python on image data\)"
    with pytest.raises(ModelError, match=r"teacher.cnn: no model family takes a built-in CNN on text data " + listed):
        family_for("cnn", "text", "teacher.cnn")


@pytest.fixture
def cnn_model(tmp_path: Path) -> TaskModel:
    family = FAMILIES.get("cnn")
    return family.build(ModelSource(cnn=CnnSpec(widths=[8, 16])), num_labels=10, in_channels=1, base_dir=tmp_path)


def test_a_capability_the_family_lacks_names_the_stage_the_family_and_the_fix(cnn_model: TaskModel) -> None:
    family = family_of(cnn_model)
    assert family.name == "cnn" and not family.supports("moefy")
    with pytest.raises(ModelError, match=r"stages\[1\] \(moefy\): Mixture-of-Experts conversion of the FFNs \(moefy\) "
                                         r"is not supported for the cnn family \(CNN image classifiers\), a built-in "
                                         r"CNN\."):  # fmt: skip
        family.method(MOEFY, "stages[1] (moefy)", cnn_model)
    user = TaskModel(cnn_model.module, "python", "image", 10, None, {"factory": "pkg:make"})
    with pytest.raises(ModelError, match=r"not supported for the cnn family .*a Python factory's model\. Prune it "
                                         r"with `method: torch_pruning`\."):  # fmt: skip
        family.method(PRUNE_DPHUBERT, "stages[0] (prune)", user, "Prune it with `method: torch_pruning`.")
    with pytest.raises(ModelError, match="hidden-state distillation is not supported for the cnn family"):
        family.method(HIDDEN_STATES, "distill", cnn_model)


def test_building_and_loading_adopt_the_model_into_its_family(cnn_model: TaskModel, tmp_path: Path) -> None:
    assert cnn_model.family == "cnn" and cnn_model.features == ["stages.0", "stages.1"]
    cnn_model.save(tmp_path / "m")
    again = load(tmp_path / "m")
    assert again.family == "cnn" and again.features == cnn_model.features
    bare = TaskModel(cnn_model.module, "cnn", "image", 10, None, cnn_model.spec)  # made by a library: no family yet
    assert family_of(bare).name == "cnn" and bare.features == cnn_model.features


def test_a_saved_transform_this_installation_cannot_rebuild_is_named(cnn_model: TaskModel, tmp_path: Path) -> None:
    cnn_model.record("nope", {"a": 1})
    cnn_model.save(tmp_path / "m")
    with pytest.raises(ModelError, match=r"records a transform 'nope' that this installation cannot rebuild "
                                         r"\(known: .*channel_shapes.*\)"):  # fmt: skip
        load(tmp_path / "m")


def _model_words() -> set[str]:
    """The values a branch on a model would compare with: source kinds, family names, modalities."""
    return {w for _, f in FAMILIES.items() for w in (f.name, f.modality, *f.kinds)}


def _branches(tree: ast.AST) -> list[str]:
    """`x.kind == "hf"`, `x.family != "cnn"`, `x.modality in ("text",)`, `isinstance(model.module, SomeNet)`: a
    stage testing what a model is (an artifact's `kind == "onnx"` is not a model test)."""
    words, found = _model_words(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            literals = {c.value for side in sides for c in ast.walk(side) if isinstance(c, ast.Constant)}
            if any(isinstance(x, ast.Attribute) and x.attr in {"kind", "family", "modality"} for x in sides) and (
                literals & words
            ):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            cls = ast.unparse(node.args[1])
            if not cls.endswith("Config") and not any(w in cls for w in ("str", "dict", "list", "int", "float")):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_branch_finder_finds_branches() -> None:
    code = "if model.kind == 'hf': pass\nif s.modality in ('text',): pass\nif isinstance(m.module, Net): pass\n"
    assert len(_branches(ast.parse(code))) == 3
    assert not _branches(ast.parse("if art.kind == 'onnx': pass\nif isinstance(cfg, QatConfig): pass\n"))


def test_stages_never_test_what_a_model_is() -> None:
    """Stages ask the family (`family_of(model)`); they never branch on a model's kind, family, modality or
    class (isinstance on configs and plain values is fine)."""
    found = {p.name: b for p in sorted(STAGES.glob("*.py")) if (b := _branches(ast.parse(p.read_text())))}
    assert not found, found


def test_families_tell_ptq_what_to_quantize_and_what_to_fuse(
    cnn_model: TaskModel, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    cnn = family_of(cnn_model).ptq_scheme(cnn_model)
    assert "Conv" in cnn.static_ops and cnn.fusion is None
    encoder = FAMILIES.get("encoder")
    bert = encoder.build(ModelSource(hf=str(tiny_bert_dir)), num_labels=2, in_channels=None, base_dir=tmp_path)
    scheme = encoder.ptq_scheme(bert)
    assert scheme.fusion == (4, 32, 8) and "Conv" not in scheme.static_ops  # 4 heads of 8 in the tiny BERT
