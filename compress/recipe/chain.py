"""Checks across stages that need no model: what `run` would refuse minutes in, refused by `validate` and
before the first stage of `run`. Each names the recipe key to change."""

from __future__ import annotations

from typing import Any

from compress.errors import RecipeError
from compress.recipe.schema import Recipe

ATTENTION_LOSSES = ("attention_map", "attention_output", "minilm")


def _produces(stage: Any) -> str | None:
    """The model artifact a stage writes (None for stages that write only ONNX or measurements)."""
    if stage.stage == "moefy":
        return stage.output or f"{stage.source}.moe"
    if stage.stage in ("distill", "prune", "search"):
        return stage.output
    return None


def check_chain(recipe: Recipe) -> None:
    problems: list[str] = []
    transformer_teacher = recipe.teacher.hf is not None or recipe.teacher.hf_package is not None
    if recipe.teacher.cnn is not None and recipe.data.modality == "text":
        problems.append(f"teacher.cnn: built-in CNNs classify images; data.format is {recipe.data.format} (text). "
                        "Use an `hf` / `hf_package` teacher, or image data.")  # fmt: skip
    moe: set[str] = set()
    stage: Any
    for i, stage in enumerate(recipe.stages):
        key = f"stages[{i}]"
        student = getattr(stage, "student", None)
        if student is not None and student.bert is not None and not transformer_teacher:
            problems.append(f"{key}.student.bert: `bert` students are built from a Hugging Face BERT-family "
                            f"teacher; this teacher is {recipe.teacher.describe()}. Use a `cnn` or `python` "
                            "student.")  # fmt: skip
        if stage.stage == "moefy" and not transformer_teacher:
            problems.append(f"{key}: moefy turns the FFNs of a Hugging Face BERT-family encoder into experts; this "
                            f"teacher is {recipe.teacher.describe()}.")  # fmt: skip
        if stage.stage == "prune" and stage.method == "dphubert" and recipe.teacher.python is not None:
            problems.append(f"{key}.method: dphubert prunes Hugging Face encoders and built-in CNNs; a `python` "
                            "model is pruned with `method: torch_pruning`.")  # fmt: skip
        if stage.stage == "prune" and stage.method == "torch_pruning" and transformer_teacher:
            problems.append(f"{key}.method: torch_pruning prunes image CNNs; use `method: dphubert` for "
                            "Transformer encoders.")  # fmt: skip
        space = getattr(stage, "space", None) if stage.stage == "search" else None
        if space is not None and (space.kind == "transformer") != transformer_teacher:
            want = "a Transformer space (layers, hidden, heads, ffn)" if transformer_teacher else "a CNN space"
            problems.append(f"{key}.space: a {space.kind} space does not fit this teacher "
                            f"({recipe.teacher.describe()}); give {want}.")  # fmt: skip
        attention = [c.name for c in getattr(stage, "losses", None) or [] if c.name in ATTENTION_LOSSES]
        if attention and not transformer_teacher:
            problems.append(f"{key}.losses: {', '.join(attention)} compare attention of Transformer encoders; this "
                            f"teacher is {recipe.teacher.describe()}. Use kd, ce or hidden.")  # fmt: skip
        explicit_static = "int8" in stage.model_fields_set and "static" in (getattr(stage, "int8", None) or [])
        if stage.stage == "export" and explicit_static:
            hit = sorted(moe & set(stage.models or moe))
            if hit:
                problems.append(f"{key}.int8: static int8 does not apply to {hit[0]!r}, a MoE model (its experts' "
                                "shapes depend on the data). Use `int8: [dynamic]`, or list the other models in "
                                "`models`.")  # fmt: skip
        if stage.stage == "quantize" and stage.method == "ptq" and explicit_static and stage.source in moe:
            problems.append(f"{key}.int8: static int8 does not apply to {stage.source!r}, a MoE model. Use "
                            "`int8: [dynamic]`.")  # fmt: skip
        produced = _produces(stage)
        if produced is not None:
            if stage.stage == "moefy":
                moe.add(produced)
            else:
                moe.discard(produced)
    if problems:
        raise RecipeError("\n".join(problems))
