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
    """What the teacher's family supports, asked of the family (never by testing the model), and MoE models
    refused by static int8."""
    from compress.errors import ModelError
    from compress.families import family_of_source, source_key, source_kind

    problems: list[str] = []
    where = f"teacher.{source_key(recipe.teacher)} (data.format {recipe.data.format})"
    try:
        family = family_of_source(recipe.teacher, recipe.data.modality, where)
    except ModelError as exc:
        raise RecipeError(f"{exc} Use a teacher of a family that takes {recipe.data.modality} data.") from None
    kind, teacher = source_kind(recipe.teacher), recipe.teacher.describe()
    member = f"this teacher ({teacher}, {family.name} family)"

    def unsupported(capability: str) -> bool:
        return not family.supports(capability, kind)

    moe: set[str] = set()
    static_cache = False  # an ExecuTorch program of a causal LM: its cache holds data.max_length positions
    stage: Any
    for i, stage in enumerate(recipe.stages):
        key = f"stages[{i}]"
        student = getattr(stage, "student", None)
        if student is not None and student.bert is not None and unsupported("student:bert"):
            problems.append(f"{key}.student.bert: `bert` students are built from a Hugging Face BERT-family "
                            f"teacher; {member} has none. Use a `cnn` or `python` student.")  # fmt: skip
        if student is not None and student.decoder is not None and unsupported("student:decoder"):
            problems.append(f"{key}.student.decoder: `decoder` students are sliced from a causal-LM teacher "
                            f"(`task: causal_lm`); {member} is not one. Use `bert`, `cnn` or `python`.")  # fmt: skip
        if getattr(stage, "student_data", None) is not None and recipe.data.modality != "lm":
            problems.append(f"{key}.student_data: student-generated sequences are for causal LMs (`task: "
                            "causal_lm`); remove it.")  # fmt: skip
        if getattr(stage, "augment", None) is not None and recipe.data.modality != "text":
            problems.append(f"{key}.augment: augmentation rewrites sentences of text classification data; this "
                            f"recipe's data ({recipe.data.format}) is not text. Remove `augment`.")  # fmt: skip
        if getattr(stage, "augment", None) is not None and recipe.data.columns.text_pair is not None:
            problems.append(f"{key}.augment: the data has sentence pairs (data.columns.text_pair); augmentation "
                            "applies to single sentences. Remove `augment`.")  # fmt: skip
        vocab = recipe.data.tokenizer.vocab_size if recipe.data.tokenizer is not None else None
        top_k = getattr(stage, "teacher_top_k", None) if recipe.data.modality == "lm" else None
        if vocab is not None and top_k is not None and stage.cache_teacher_outputs and top_k > vocab:
            problems.append(f"{key}.teacher_top_k: {top_k} is more than the vocabulary data.tokenizer trains "
                            f"({vocab} tokens); give at most {vocab}.")  # fmt: skip
        block = recipe.data.max_length
        if stage.stage == "profile" and recipe.data.modality == "lm" and stage.generation.prompt > block:
            problems.append(f"{key}.generation.prompt: {stage.generation.prompt} tokens is longer than the blocks the "
                            f"models learn from (data.max_length {block}); give at most {block}.")  # fmt: skip
        if stage.stage == "export" and recipe.data.modality == "lm" and stage.executorch is not None:
            static_cache = True
            et = stage.executorch
            if "precisions" in et.model_fields_set and "int8" in et.precisions:
                problems.append(f"{key}.executorch.precisions: int8 ExecuTorch programs of causal LMs are not built "
                                "(XNNPACK's int8 flow does not take a program that updates its cache); give "
                                "`precisions: [fp32]`, or deploy the int4 / int8 ONNX graphs.")  # fmt: skip
        generated = stage.generation.prompt + stage.generation.new_tokens if stage.stage == "profile" else 0
        if stage.stage == "profile" and recipe.data.modality == "lm" and static_cache and generated > block:
            shape = stage.generation
            problems.append(f"{key}.generation: a prompt of {shape.prompt} and {shape.new_tokens} new tokens overflow "
                            f"the ExecuTorch programs' static cache of data.max_length {block} positions; give at "
                            f"most {block} in all.")  # fmt: skip
        if stage.stage == "export" and unsupported("export"):
            problems.append(f"{key}: export does not apply to {member} yet (no exporter for it); leave the stage "
                            "out and use the PyTorch model.")  # fmt: skip
        quant_methods = (["ptq"] + (["qat"] if {"qat", "qat_dynamic"} & set(stage.order) else [])
                         if stage.stage == "quantize" and stage.method == "budget"
                         else [getattr(stage, "method", "")])  # fmt: skip
        if stage.stage == "quantize" and stage.method != "bitsandbytes" and any(
                unsupported(f"quantize:{m}") for m in quant_methods):  # fmt: skip
            problems.append(f"{key}.method: {stage.method} does not apply to {member} yet.")
        if stage.stage == "quantize" and stage.method == "budget" and family.onnx_graph == "kv_cache":
            problems.append(f"{key}.method: budget picks int8 methods by accuracy; {member} is a causal LM, quantized "
                            "by `ptq` or `qat` (4-bit weights)")  # fmt: skip
        weights: Any = getattr(stage, "weights", None)
        if (stage.stage == "quantize" and stage.method == "qat" and "weights" in stage.model_fields_set
                and weights.bits not in family.qat_weight_bits):  # fmt: skip
            bits = " or ".join(map(str, family.qat_weight_bits))
            problems.append(f"{key}.weights.bits: {weights.bits}-bit QAT does not apply to {member}; it trains "
                            f"{bits}-bit weights (leave `weights` out for that default).")  # fmt: skip
        explicit = "int8" in stage.model_fields_set and "static" in (getattr(stage, "int8", None) or [])
        if explicit and stage.stage in ("export", "quantize") and family.onnx_graph == "kv_cache":
            problems.append(f"{key}.int8: static int8 does not apply to {member}, a causal LM (its activations are "
                            "not calibrated here); use `int8: [dynamic]`.")  # fmt: skip
        if stage.stage == "moefy" and unsupported("moefy"):
            problems.append(f"{key}: moefy turns the FFNs of a Hugging Face BERT-family encoder into experts; "
                            f"{member} has none to convert.")  # fmt: skip
        if stage.stage in ("prune", "search") and unsupported(f"{stage.stage}:{stage.method}"):
            others = [c.split(":")[1] for c in family.capabilities if c.startswith(f"{stage.stage}:")
                      and not unsupported(c)]  # fmt: skip
            hint = f"use `method: {others[0]}`" if others else f"{stage.stage} does not apply to it"
            problems.append(f"{key}.method: {stage.method} does not apply to {member}; {hint}.")
        if stage.stage == "search" and stage.budget.max_latency_ms is not None and unsupported("search:latency"):
            problems.append(f"{key}.budget.max_latency_ms: latency tables time encoders and CNNs, not the generation "
                            f"of {member}; give max_params or max_mflops.")  # fmt: skip
        space = getattr(stage, "space", None) if stage.stage == "search" else None
        if space is not None and family.space_kind is not None and space.kind != family.space_kind:
            problems.append(f"{key}.space: a {space.kind} space does not fit {member}; give a {family.space_kind} "
                            "space.")  # fmt: skip
        attention = [c.name for c in getattr(stage, "losses", None) or [] if c.name in ATTENTION_LOSSES]
        if attention and unsupported("losses:attention"):
            problems.append(f"{key}.losses: {', '.join(attention)} compare attention of Transformer encoders; "
                            f"{member} has none. Use kd, ce or hidden.")  # fmt: skip
        if stage.stage == "quantize" and stage.method == "bitsandbytes" and unsupported("quantize:bitsandbytes"):
            problems.append(f"{key}.method: bitsandbytes deployment covers Hugging Face models; {member} is not one. "
                            "Use qat or ptq.")  # fmt: skip
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
    if recipe.train.gradient_checkpointing and unsupported("gradient_checkpointing"):
        problems.append(f"train.gradient_checkpointing: {member} cannot recompute its activations (Hugging Face "
                        "models can); set it to false.")  # fmt: skip
    problems += _batch_splits(recipe)
    if problems:
        raise RecipeError("\n".join(problems))


def _batch_splits(recipe: Recipe) -> list[str]:
    """Every training schedule's global batch must give each launched process at least one example per
    micro-batch: refused before any work, not when the stage starts."""
    from compress.config import TrainSchedule
    from compress.training.engine import launched_world

    _, world, _ = launched_world()
    accumulation = recipe.train.gradient_accumulation
    parts = world * accumulation
    found = []
    for i, stage in enumerate(recipe.stages):
        if not stage.trains():
            continue
        schedules = [("", stage)] if isinstance(stage, TrainSchedule) else []
        schedules += [(f".{k}", v) for k, v in stage if isinstance(v, TrainSchedule)]
        for key, schedule in schedules:
            if schedule.batch_size < parts:
                found.append(
                    f"stages[{i}]{key}.batch_size: {schedule.batch_size} cannot be split over {world} process(es) x "
                    f"{accumulation} accumulation step(s) (train.gradient_accumulation); give at least {parts}, or "
                    "launch fewer processes."
                )
    return found
