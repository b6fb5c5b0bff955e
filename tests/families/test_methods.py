"""Methods registered per family: "supported" means "has an implementation", and `validate` refuses exactly the
(method, family, kind) combinations that have none, before any work, naming the family and the method."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError, ModelError
from compress.families import FAMILIES
from compress.families.methods import METHODS, Method, implementation, register
from tests.conftest import lm_recipe_head, text_recipe_head, write_recipe

# one stage per method a recipe names by `stage` / `method`, each on the teacher
STAGE_OF = {
    "prune:dphubert": "  - {stage: prune, method: dphubert, source: teacher, output: p1, target: {params: 0.5}}",
    "prune:torch_pruning": "  - {stage: prune, method: torch_pruning, source: teacher, output: p2, "
    "target: {flops: 0.5}}",
    "search:diswot": "  - {stage: search, method: diswot, output: s1, budget: {max_params: 1.0e+6}}",
    "search:autodistil": "  - {stage: search, method: autodistil, output: s2, budget: {max_params: 1.0e+6}}",
    "moefy": "  - {stage: moefy, source: teacher, experts: 2, output: m1}",
    "quantize:qat": "  - {stage: quantize, method: qat, source: teacher}",
    "quantize:ptq": "  - {stage: quantize, method: ptq, source: teacher}",
    "quantize:budget": "  - {stage: quantize, method: budget, source: teacher, accuracy_drop: 1.0}",
    "quantize:bitsandbytes": "  - {stage: quantize, method: bitsandbytes, source: teacher}",
}
DIGITS = "\nname: x\nseed: 0\ndata: {format: sklearn_digits}\nteacher: {cnn: {widths: [8, 16]}}\nstages:\n"
USER_CNN = "\nname: x\nseed: 0\ndata: {format: sklearn_digits}\nteacher: {python: tests.fixtures.factories:small_cnn}\n"


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_registration_is_an_implementation_for_kinds_the_family_builds(name: str) -> None:
    family = FAMILIES.get(name)
    assert family.capabilities, name
    for method_name, kinds in family.capabilities.items():
        method = METHODS[method_name]
        assert kinds and set(kinds) <= set(family.kinds), (method_name, kinds)
        for kind in family.kinds:
            impl = implementation(method, name, kind)
            assert (impl is not None) == family.supports(method_name, kind) == (kind in kinds)
            assert impl is None or impl is True or callable(impl) or type(impl).__module__.startswith("compress.")


def test_a_method_is_registered_once_per_family() -> None:
    with pytest.raises(ValueError, match="moefy is already registered for the encoder family"):
        register(METHODS["moefy"], "encoder", ("hf",), lambda model, where: [])


def test_an_unregistered_method_names_the_family_the_stage_and_what_applies() -> None:
    cnn = FAMILIES.get("cnn")
    from compress.models.task_model import TaskModel
    from tests.fixtures.factories import small_cnn

    user = TaskModel(small_cnn(), "python", "image", 10, None, {"factory": "pkg:make"})
    expected = (r"stages\[1\]: structured pruning with hard-concrete masks \(prune, method dphubert\) is not "
                r"supported for the cnn family \(CNN image classifiers\), a Python factory's model\. It has prune "
                r"torch_pruning\.$")  # fmt: skip
    with pytest.raises(ModelError, match=expected):
        cnn.method(METHODS["prune:dphubert"], "stages[1]", user)
    assert isinstance(METHODS["moefy"], Method)


def refused_exactly(tmp_path: Path, text: str, methods: list[str], family: str, kind: str,
                    model_type: str | None = None) -> str:  # fmt: skip
    """Validate a recipe whose stages are one per method, in order: `validate` must refuse the stages of exactly the
    methods the family has no implementation of for this kind (and model type). Returns the refusal."""
    try:
        pipeline.validate(write_recipe(tmp_path, text))
        message = ""
    except CompressError as exc:
        message = str(exc)
    refused = {methods[int(i)] for i in re.findall(r"stages\[(\d+)\]", message)}
    expected = {m for m in methods if not FAMILIES.get(family).supports(m, kind, model_type)}
    assert refused == expected, message
    assert not (tmp_path / "out").exists()
    return message


def _refused(tmp_path: Path, head: str, family: str, kind: str) -> None:
    methods = list(STAGE_OF)
    refused_exactly(tmp_path, head + "\n".join(STAGE_OF[m] for m in methods) + "\n", methods, family, kind)


def test_validate_refuses_exactly_what_the_cnn_family_has_not_registered(tmp_path: Path) -> None:
    _refused(tmp_path, DIGITS, "cnn", "cnn")


def test_validate_refuses_exactly_what_a_users_cnn_has_not_registered(tmp_path: Path) -> None:
    _refused(tmp_path, USER_CNN + "stages:\n", "cnn", "python")


def test_validate_refuses_exactly_what_the_encoder_family_has_not_registered(
    tmp_path: Path, sst2_slice: Path, tiny_bert_dir: Path
) -> None:
    head = text_recipe_head("x").format(data=sst2_slice, teacher=tiny_bert_dir) + "stages:\n"
    _refused(tmp_path, head, "encoder", "hf")


def test_validate_refuses_exactly_what_the_decoder_family_has_not_registered(
    tmp_path: Path, pycode_slice: Path
) -> None:
    head = lm_recipe_head("x", pycode_slice).split("stages:")[0] + "stages:\n"
    _refused(tmp_path, head, "decoder", "hf")
