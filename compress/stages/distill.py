"""`distill`: train a student from the teacher with registered distillation losses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator

from compress.artifacts import Artifacts
from compress.config import ArtifactName, TrainSchedule
from compress.context import Context
from compress.data.augment import Augment, augment_texts
from compress.data.dataset import DataBundle, Split
from compress.data.text import tokenize
from compress.errors import StageError
from compress.families import Family, family_of, family_of_source, source_where
from compress.families.methods import DISTILL_AUGMENT
from compress.losses import LossConfig, build_terms, default_losses, loss_config_union
from compress.models.source import ModelSource
from compress.stages.base import (
    Chain,
    StageConfig,
    check_losses,
    check_student,
    register_stage,
    require,
    save_model_artifact,
)
from compress.training.distillation import distillation_step
from compress.training.evaluate import selection_metric
from compress.training.loop import TrainResult, total_steps, train
from compress.training.student_data import StudentData, StudentDataConfig
from compress.training.teacher_cache import TopKCache, cached_teacher_logits, cached_teacher_outputs

log = logging.getLogger("compress")
if TYPE_CHECKING:
    from compress.models.task_model import TaskModel

    LossUnion = LossConfig
else:
    LossUnion = loss_config_union()


class DistillConfig(StageConfig, TrainSchedule):
    """Distil the teacher into a student."""

    stage: Literal["distill"]
    student: ModelSource | None = Field(
        None, description="The student to build. Default: the `student` artifact of an earlier stage (e.g. search)."
    )
    losses: list[LossUnion] = Field(
        default_factory=default_losses,
        description="Weighted loss terms, by `name`: kd, ce, hidden, minilm, l1_cosine, attention_map, "
        "attention_output; for causal LMs also fkl, rkl, skl, srkl, jsd, taid (see the loss table).",
    )
    cache_teacher_outputs: bool = Field(
        True,
        description="Compute the teacher's logits on the training split once and cache them on disk "
        "(only when every loss needs just the teacher's logits). Causal LMs cache "
        "the top `teacher_top_k` log-probabilities per token.",
    )
    teacher_top_k: int = Field(
        32,
        gt=0,
        description="Causal LMs: tokens per position the teacher cache keeps (their exact probabilities; the mass "
        "left over is spread over the other tokens). The report gives the mass kept. At most the vocabulary.",
    )
    student_data: StudentDataConfig | None = Field(
        None,
        description="Causal LMs: train some steps on the student's own continuations, scored by the teacher (GKD's "
        "on-policy batches, or DistiLLM's adaptive replay buffer).",
    )
    augment: Augment | None = Field(
        None,
        description="Text classification: grow the training split with augmented copies of its examples (Tang et "
        "al. 2019: masking, word replacement, n-gram sampling), labelled by the teacher (its logits, cached; `ce` "
        "reads its argmax). `epochs` then counts passes over the grown split.",
    )
    output: ArtifactName = Field("student", description="Name of the produced model artifact.")

    @field_validator("losses")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("give at least one loss")
        return v

    def trains(self) -> bool:
        return True

    def produces(self) -> str | None:
        return self.output

    def check(self, chain: Chain) -> list[str]:
        key, data = chain.key, chain.data
        problems = check_student(self.student, chain, f"{key}.student") + check_losses(self.losses, chain,
                                                                                         f"{key}.losses")  # fmt: skip
        if self.student_data is not None and not chain.supports("losses:sequence"):
            problems.append(f"{key}.student_data: student-generated sequences are for causal LMs (`task: "
                            "causal_lm`); remove it.")  # fmt: skip
        if self.augment is not None and not chain.supports("distill:augment"):
            problems.append(f"{key}.augment: augmentation rewrites sentences of text classification data; this "
                            f"recipe's data ({data.format}) is not text. Remove `augment`.")  # fmt: skip
        elif self.augment is not None and data.columns.text_pair is not None:
            problems.append(f"{key}.augment: the data has sentence pairs (data.columns.text_pair); augmentation "
                            "applies to single sentences. Remove `augment`.")  # fmt: skip
        vocab = data.tokenizer.vocab_size if data.tokenizer is not None else None
        if (vocab is not None and chain.supports("losses:sequence") and self.cache_teacher_outputs
                and self.teacher_top_k > vocab):  # fmt: skip
            problems.append(f"{key}.teacher_top_k: {self.teacher_top_k} is more than the vocabulary data.tokenizer "
                            f"trains ({vocab} tokens); give at most {vocab}.")  # fmt: skip
        return problems


@register_stage("distill", DistillConfig)
def run(artifacts: Artifacts, config: DistillConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    require(artifacts, "teacher", "distill")
    data = ctx.data()
    teacher = ctx.load_model(artifacts["teacher"])
    student, family = _student(artifacts, config, ctx, data, teacher)
    teacher.module.eval().requires_grad_(False)
    probe = next(iter(data.train.loader(min(8, len(data.train)))))
    where = "distill.student" if config.student is None else source_where("distill.student", config.student)
    family.check_student(student, lambda: probe, where)
    terms = build_terms(config.losses, student, teacher, probe)
    cached: torch.Tensor | TopKCache | None = None
    cache_info: dict = {}
    train_split = data.train
    if config.augment is not None:
        train_split, cached, cache_info["augment"] = _augment(data, config.augment, teacher, artifacts, ctx,
                                                              config.eval_batch_size)  # fmt: skip
    elif config.cache_teacher_outputs and not any(t.teacher_paths for t in terms):
        cached, cache_info = cached_teacher_outputs(teacher, artifacts["teacher"].sha256, data, ctx.cache_dir,
                                                    ctx.engine, top_k=config.teacher_top_k,
                                                    batch_size=config.eval_batch_size)  # fmt: skip
    if not config.cache_teacher_outputs or any(t.teacher_paths for t in terms):
        cached = None
    log.info("distill: teacher %d params -> student %d params; losses %s; teacher %s", teacher.num_params(),
             student.num_params(), ", ".join(f"{c.name}x{c.weight:g}" for c in config.losses),
             "logits cached" if cached is not None else "run every step")  # fmt: skip
    generated = None
    if config.student_data is not None:
        generated = StudentData(config.student_data, student.module, data.train.pad_id, data.max_length)
    step = distillation_step(student, teacher, terms, [f"loss_{c.name}" for c in config.losses], cached, ctx.engine,
                             generated)  # fmt: skip
    result = _train(student, step, terms, train_split, data, config, ctx, generated)
    art = save_model_artifact(student, config.output, ctx, "distill", "teacher", data, config.eval_batch_size, result)
    art.info["losses"] = [c.model_dump() for c in config.losses]
    if cache_info:
        art.info["teacher_cache"] = cache_info
    if generated is not None:
        art.info["student_data"] = generated.summary()
        log.info("distill: student data %s", generated.summary())
    return {config.output: art}


def _student(artifacts: Artifacts, config: DistillConfig, ctx: Context, data: DataBundle,
             teacher: TaskModel) -> tuple[TaskModel, Family]:  # fmt: skip
    """The student the recipe builds (``student``), or the `student` artifact of an earlier stage."""
    if config.student is None:
        require(artifacts, "student", "distill")
        student = ctx.load_model(artifacts["student"])
        return student, family_of(student)
    torch.manual_seed(ctx.seed)
    family = family_of_source(config.student, data, "distill.student")
    source = family.student_source(config.student, teacher, data)
    student = family.build(source, num_labels=data.num_labels, in_channels=data.in_channels,
                           base_dir=ctx.base_dir, teacher=teacher, tokenizer=teacher.tokenizer,
                           where="distill.student")  # fmt: skip
    return student, family


def _train(student: TaskModel, step: Any, terms: list, train_split: Split, data: DataBundle, config: DistillConfig,
           ctx: Context, generated: StudentData | None) -> TrainResult:  # fmt: skip
    """The training loop, with TAID's interpolation schedule and the student-data buffer's dev feedback."""
    steps = total_steps(config, len(train_split))
    scheduled = [t for t in terms if hasattr(t, "advance")]  # TAID's interpolation schedule

    def on_step(n: int) -> None:
        for term in scheduled:
            term.advance(n, steps)

    higher = selection_metric(data.dev)[1]
    result = train(student, step, train_split, data.dev, config, session=ctx.session(),
                   extra=torch.nn.ModuleList(terms),  # regressors of hint losses train with the student
                   label="distill", on_step=on_step if scheduled else None,
                   on_eval=(lambda v: generated.observe(v, higher)) if generated is not None else None)  # fmt: skip
    for term in scheduled:
        log.info("distill: TAID ended at t = %.4f", term.interpolation())
    return result


def _augment(
    data: DataBundle, config: Augment, teacher: TaskModel, artifacts: Artifacts, ctx: Context, batch_size: int
) -> tuple[Split, torch.Tensor, dict]:
    """The training split followed by its augmented examples, labelled by the teacher: the split, the teacher's
    logits on all of it (cached on disk under the augmentation's settings) and what the report says of it."""
    train = data.train
    if train.texts is None or not family_of(teacher).has(DISTILL_AUGMENT, teacher):  # the recipe check refuses it
        raise StageError(f"distill.augment: augments text classification data (sentences and labels); the "
                         f"training split is {train.task} data without sentences. Remove `augment`.")  # fmt: skip
    if train.pairs is not None:
        raise StageError("distill.augment: the data has sentence pairs (`data.columns.text_pair`); augmentation "
                         "applies to single sentences. Remove `augment`.")  # fmt: skip
    tokenizer = teacher.tokenizer
    if config.mask > 0 and getattr(tokenizer, "mask_token", None) is None:
        raise StageError("distill.augment.mask: the teacher's tokenizer has no mask token; set `mask: 0`.")
    mask_token = tokenizer.mask_token if config.mask > 0 else ""
    texts, sources = augment_texts(train.texts, config, mask_token=mask_token, seed=ctx.seed)
    ids = tokenize(tokenizer, texts, None, data.max_length)
    grown = Split(train.name, [*train.features, *ids], torch.cat([train.labels, torch.full((len(ids),), -1)]),
                  train.pad_id, [*train.texts, *texts])  # fmt: skip
    logits = cached_teacher_logits(teacher, artifacts["teacher"].sha256, data, ctx.cache_dir, ctx.engine,
                                   batch_size=batch_size, split=grown,
                                   variant=["augment", config.model_dump(), ctx.seed])  # fmt: skip
    n = len(train)
    grown.labels[n:] = logits[n:].argmax(-1)
    agree = float((logits[:n].argmax(-1) == train.labels).float().mean()) if n else 0.0
    info = {"examples": n, "augmented": len(ids), "copies": config.copies, "teacher_train_accuracy": agree,
            "from": len(set(sources))}  # fmt: skip
    log.info("distill: augmented the training split from %d to %d examples (Tang et al. 2019; %d sources); the "
             "teacher labels them", n, len(grown), info["from"])  # fmt: skip
    return grown, logits, info
