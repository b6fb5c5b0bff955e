"""`teacher`: stage 0 of every run, made from the recipe's `teacher` key (not listed in `stages`). The teacher's
family builds it (a fresh head sized to the data's labels), checks it against the data before anything trains,
and saves it; every later stage loads it from the cache."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import torch
from pydantic import Field

from compress.artifacts import Artifact, Artifacts
from compress.context import Context
from compress.families import family_of_source, source_where
from compress.models.source import ModelSource
from compress.stages.base import StageConfig, register_stage

log = logging.getLogger("compress")


class TeacherConfig(StageConfig):
    """The teacher, built from the recipe's top-level `teacher` key."""

    stage: Literal["teacher"]
    source: ModelSource = Field(..., description="The teacher model (the recipe's `teacher`).")


@register_stage("teacher", TeacherConfig, in_recipe=False)
def run(artifacts: Artifacts, config: TeacherConfig, ctx: Context) -> Artifacts:
    data_config = ctx.data_config
    family = family_of_source(config.source, data_config, "teacher")
    tokenizer = _trained_tokenizer(ctx) if data_config.tokenizer is not None else None
    num_labels, in_channels = ctx.label_info()
    if tokenizer is not None:  # a model built from scratch: one output per token of the trained vocabulary
        num_labels = len(tokenizer)
    torch.manual_seed(ctx.seed)
    model = family.build(config.source, num_labels=num_labels, in_channels=in_channels, base_dir=ctx.base_dir,
                         tokenizer=tokenizer)  # fmt: skip
    folder = ctx.stage_dir / "teacher"
    model.save(folder)

    def sample() -> dict[str, torch.Tensor]:
        ctx.tokenizer_folder = ctx.tokenizer_folder or folder  # text is tokenised with the teacher's tokenizer
        train = ctx.data().train
        return train.collate(list(range(min(2, len(train)))))

    family.check_teacher(model, sample, data_config.max_length, source_where("teacher", config.source))
    art = Artifact(
        "teacher", "model", folder, "teacher", params=model.num_params(),
        info={"family": model.family, "kind": model.kind, "source": config.source.describe()},
    )  # fmt: skip
    return {"teacher": art.finalize()}


def _trained_tokenizer(ctx: Context) -> Any:
    """`data.tokenizer`: a byte-level BPE trained on the training split, saved with the teacher (which every later
    model and the data share)."""
    from compress.data.dataset import lm_documents
    from compress.data.lm import tokenizer_corpus, train_tokenizer

    cfg = ctx.data_config
    assert cfg.tokenizer is not None
    docs = tokenizer_corpus(lm_documents(cfg, ctx.base_dir, ctx.seed)["train"], cfg.tokenizer)
    started = time.perf_counter()
    tokenizer = train_tokenizer(docs, cfg.tokenizer)
    log.info("tokenizer: byte-level BPE, %d tokens, trained on %d documents (%d characters) in %.1fs", len(tokenizer),
             len(docs), sum(map(len, docs)), time.perf_counter() - started)  # fmt: skip
    return tokenizer
