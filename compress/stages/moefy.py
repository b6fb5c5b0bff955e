"""`moefy`: LaDiMo. A trained Transformer's FFN blocks become token-routed Mixture-of-Experts blocks with a
few minutes of calibration instead of re-training: experts from clustered neurons (exact with all experts),
routers trained by layer-wise distillation, a routing policy per layer chosen against an accuracy budget,
optionally a short logit-KD fine-tune against the dense model."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compress.artifacts import Artifact, Artifacts
from compress.config import ArtifactName, Strict, TrainSchedule
from compress.context import Context
from compress.data.dataset import Split
from compress.errors import DataError, ModelError
from compress.families import family_of
from compress.families.methods import MOEFY
from compress.losses import LossConfig, build_terms
from compress.losses.terms import KDConfig
from compress.models.task_model import TaskModel
from compress.moe import convert, policy
from compress.moe.experts import MoeFfn
from compress.stages.base import Chain, StageConfig, register_stage, require, save_model_artifact
from compress.training.distillation import distillation_step
from compress.training.evaluate import describe_score, score
from compress.training.loop import train

log = logging.getLogger("compress")


class RouterOptions(Strict):
    """Layer-wise distillation of each layer's router."""

    steps: int = Field(300, gt=0, description="Optimiser steps per layer.")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the router.")
    batch_tokens: int = Field(4096, gt=0, description="Calibration tokens per step.")


class PolicyOptions(Strict):
    """How many experts each token uses, per layer."""

    kind: Literal["topk", "threshold"] = Field(
        "topk", description="`topk`: k experts per token; `threshold`: the fewest experts whose router "
        "probabilities sum to at least the threshold (a variable number per token)."
    )  # fmt: skip
    top_k: int | None = Field(None, gt=0, description="Fixed k for every layer (no search); `kind: topk`.")
    threshold: float | None = Field(
        None, gt=0, le=1, description="Fixed threshold for every layer (no search); `kind: threshold`."
    )
    max_accuracy_drop: float = Field(
        0.5, ge=0, description="Search: largest dev-accuracy loss (points) against the dense model. For causal LMs, "
        "the largest dev-perplexity increase, in percent (measured as 100 ln(ppl / dense ppl)).",
    )
    eval_samples: int = Field(1000, gt=0, description="Dev examples the search evaluates on.")
    min_tokens: int = Field(
        0,
        ge=0,
        description="Search only on dev examples of at least this many tokens, when the dev split is shorter "
        "than what the model will see (SST-2's dev split is mostly phrases, its test split sentences).",
    )

    @model_validator(mode="after")
    def _fixed(self) -> PolicyOptions:
        if self.top_k is not None and (self.threshold is not None or self.kind != "topk"):
            raise ValueError("top_k is a fixed `kind: topk` policy; give either top_k or threshold")
        if self.threshold is not None and self.kind != "threshold":
            raise ValueError("threshold is a fixed `kind: threshold` policy; set kind: threshold")
        return self


class MoeFinetune(TrainSchedule):
    """Optional logit distillation of the MoE model against the dense one (all weights train)."""

    lr: float = Field(2e-5, gt=0, description="Peak learning rate of AdamW.")
    temperature: float = Field(1.0, gt=0, description="KD temperature.")


class MoefyConfig(StageConfig):
    """Convert dense FFN blocks into Mixture-of-Experts (LaDiMo)."""

    stage: Literal["moefy"]
    source: str = Field(
        "teacher", description="Model artifact to convert (a trained BERT-family encoder, or a causal LM: gated "
        "SwiGLU FFNs of LLaMA, Qwen2, Mistral, the built-in `llama`, ...; the plain MLPs of GPT-2 and OPT).",
    )  # fmt: skip
    experts: int = Field(8, ge=2, description="Experts per FFN (must divide its intermediate size).")
    clustering: Literal["coactivation", "weights"] = Field(
        "coactivation", description="Neuron features for balanced k-means: activations over calibration tokens, "
        "or input weights."
    )  # fmt: skip
    calibration_tokens: int = Field(
        100_000, gt=0, description="Non-padding training tokens captured for clustering, routers and policy."
    )
    router: RouterOptions = Field(default_factory=RouterOptions, description="Router training.")  # type: ignore[arg-type]
    policy: PolicyOptions = Field(default_factory=PolicyOptions, description="Routing policy.")  # type: ignore[arg-type]
    finetune: MoeFinetune | None = Field(None, description="Short logit KD after conversion (default: none).")
    output: ArtifactName | None = Field(None, description="Name of the MoE model artifact (default `<source>.moe`).")

    @model_validator(mode="after")
    def _k(self) -> MoefyConfig:
        if self.policy.top_k is not None and self.policy.top_k > self.experts:
            raise ValueError(f"policy.top_k: {self.policy.top_k} is more than the {self.experts} experts")
        return self

    makes_moe = True

    def trains(self) -> bool:
        return self.finetune is not None  # router training is per layer and short: rank 0's alone otherwise

    def produces(self) -> str | None:
        return self.output or f"{self.source}.moe"

    def check(self, chain: Chain) -> list[str]:
        if chain.supports("moefy"):
            return []
        return [f"{chain.key}: moefy turns the FFNs of a Hugging Face BERT-family encoder or a causal LM into experts "
                f"(LLaMA-style, GPT-2, OPT); {chain.member} has none to convert{chain.not_yet('moefy')}."]  # fmt: skip


def _tokens(split: Split, limit: int) -> int:
    total = 0
    for feature in split.features:
        total += len(feature)
        if total >= limit:
            break
    return total


def _check(model: TaskModel, config: MoefyConfig, train_split: Split, dev: Split) -> list[Any]:
    """Everything that can be wrong, before any work."""
    where = f"moefy.source {config.source!r}"
    blocks = family_of(model).method(MOEFY, where, model)(model, where)
    inner = blocks[0].inner
    if config.experts > inner or inner % config.experts:
        raise ModelError(f"moefy.experts: {config.experts} experts do not split the FFN's {inner} neurons into equal "
                         f"experts (use a divisor of {inner}, at most {inner}).")  # fmt: skip
    have = _tokens(train_split, config.calibration_tokens)
    need = max(config.calibration_tokens, config.router.batch_tokens)
    if have < need:
        raise DataError(f"moefy.calibration_tokens: {need} tokens needed (calibration_tokens, router.batch_tokens) "
                        f"but the training split has {have}; lower them or add data.")  # fmt: skip
    long = sum(len(f) >= config.policy.min_tokens for f in dev.features)
    if config.policy.min_tokens and long < 50:
        raise DataError(f"moefy.policy.min_tokens: only {long} dev examples have {config.policy.min_tokens} tokens "
                        "or more (the search needs 50); lower it.")  # fmt: skip
    return blocks


def _activated(moes: list[tuple[str, MoeFfn]], actives: list[float]) -> dict[str, Any]:
    per_layer, dense_total, active_total = [], 0, 0.0
    for (path, m), frac in zip(moes, actives, strict=True):
        experts = m.w1.numel() + m.b1.numel() + m.w2.numel() + (m.wg.numel() if m.wg is not None else 0)
        dense = experts + m.b2.numel()
        active = frac * experts + m.b2.numel() + m.router.weight.numel() + m.router.bias.numel()
        per_layer.append({"layer": path, "dense_params": dense, "active_params": round(active)})
        dense_total, active_total = dense_total + dense, active_total + active
    return {"per_layer": per_layer, "dense_ffn_params": dense_total, "active_ffn_params": round(active_total),
            "active_fraction": active_total / dense_total}  # fmt: skip


@register_stage("moefy", MoefyConfig)
def run(artifacts: Artifacts, config: MoefyConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    require(artifacts, config.source, "moefy")
    source = artifacts[config.source]
    model = ctx.load_model(source)
    data = ctx.data()
    blocks = _check(model, config, data.train, data.dev)
    t0 = time.perf_counter()
    batches = (model.inputs(b) for b in data.train.loader(64, shuffle=True, seed=ctx.seed))
    calib = convert.capture(model.module, blocks, batches, config.calibration_tokens)
    layers = []
    for i, block in enumerate(blocks):
        x, y = calib.inputs[i], calib.outputs[i]
        groups = convert.neuron_groups(block, x, config.experts, config.clustering, ctx.seed)
        moe = convert.MoeFfn.from_dense(block, groups)
        with torch.no_grad():
            exact = float((moe.dense(x[:4096]) - y[:4096]).abs().max())
        first, last = convert.train_router(moe, x, y, steps=config.router.steps, lr=config.router.lr,
                                           batch_tokens=config.router.batch_tokens, seed=ctx.seed + i)  # fmt: skip
        convert.install(block, moe)
        layers.append({"layer": block.path, "all_experts_max_abs_diff": exact, "router_first_loss": first,
                       "router_last_loss": last, "routing_profile": policy.routing_profile(moe, x)})  # fmt: skip
        log.info("moefy %s: %d experts (all-experts error %.1e), router MSE %.4g -> %.4g", block.path, config.experts,
                 exact, first, last)  # fmt: skip
    moes = convert.moe_layers(model.module)
    chosen, search = _choose_policy(model, moes, calib, config, data.dev)
    seconds = time.perf_counter() - t0
    result = None
    if config.finetune is not None:
        result = _finetune(model, source, config, ctx)
    actives = [c.active for c in chosen]
    for entry, cand in zip(layers, chosen, strict=True):
        entry["policy"], entry["active_experts_per_token"] = cand.describe(), cand.active * config.experts
    model.record(convert.TRANSFORM, convert.spec(moes))  # rebuilt on load (a registered transform)
    name = config.output or f"{config.source}.moe"
    art = save_model_artifact(model, name, ctx, "moefy", config.source, data, 128, result)
    art.params = source.params
    art.info["moe"] = {
        "experts": config.experts, "clustering": config.clustering, "layers": layers,
        "activated": _activated(moes, actives), "policy_search": search,
        "calibration_tokens": calib.tokens, "calibration_seconds": round(seconds, 1),
    }  # fmt: skip
    return {name: art}


def _choose_policy(model: TaskModel, moes: list[tuple[str, MoeFfn]], calib: convert.Calibration,
                   config: MoefyConfig, dev: Split) -> tuple[list[policy.Candidate], dict[str, Any]]:  # fmt: skip
    opts = config.policy
    modules = [m for _, m in moes]
    if opts.top_k is not None or opts.threshold is not None:
        fixed = [policy.fixed(m, opts.top_k, opts.threshold, calib.inputs[i]) for i, m in enumerate(modules)]
        for m, c in zip(modules, fixed, strict=True):
            policy.apply(m, c)
        return fixed, {"fixed": fixed[0].describe()}
    subset = dev.long_examples(opts.min_tokens, opts.eval_samples)
    options = [policy.candidates(m, opts.kind, calib.inputs[i]) for i, m in enumerate(modules)]
    chosen, search = policy.search(modules, options, lambda: score(model, subset), opts.max_accuracy_drop)
    log.info("moefy policy: %s (dev %s, dense %s)", ", ".join(c.describe() for c in chosen),
             describe_score(subset, search["dev_accuracy"]), describe_score(subset, search["dense_dev_accuracy"]))
    return chosen, search


def _finetune(model: TaskModel, source: Artifact, config: MoefyConfig, ctx: Context) -> Any:
    assert config.finetune is not None
    data = ctx.data()
    teacher = ctx.load_model(source)
    teacher.module.eval().requires_grad_(False)
    for moe in convert.moe_layers(model.module):
        moe[1].router.requires_grad_(False)  # routing stays as chosen; experts and the rest train
    kd: list[LossConfig] = [KDConfig(name="kd", weight=1.0, temperature=config.finetune.temperature)]
    probe = next(iter(data.train.loader(8)))
    terms = build_terms(kd, model, teacher, probe)
    step = distillation_step(model, teacher, terms, ["loss_kd"], engine=ctx.engine)
    return train(model, step, data.train, data.dev, config.finetune, session=ctx.session(),
                 extra=torch.nn.ModuleList(terms), label="moefy finetune")  # fmt: skip
