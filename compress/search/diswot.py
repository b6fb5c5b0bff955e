"""DisWOT: a training-free score of how well a randomly initialised student matches a trained teacher.

Dong et al., 2023, "DisWOT: Student Architecture Search for Distillation WithOut Training" (CVPR).
On one batch of real inputs, with the student at random initialisation and the teacher trained:

- semantic distance (``semantic="class"``, the paper's): the class-activation weights are the gradients of the
  cross-entropy loss with respect to the classifier's weights, ``G = (softmax(z) - onehot(y))^T F / B``
  (classes x channels, with F the pooled last features: exactly the linear head's weight gradient, computed
  without knowing which module is the head); class-by-class Gram matrices ``normalize(G G^T)`` of teacher
  and student are compared, ``d_sem = ||S_t - S_s||_F``. ``semantic="sample"`` instead compares
  sample-by-sample Gram matrices of per-sample Grad-CAM maps (last feature map weighted by the spatially
  averaged gradient of the true-class logit, ReLU; the student's resized to the teacher's resolution).
- relation distance: sample-relation matrices ``normalize(F F^T)`` of the final pooled features;
  ``d_rel = ||R_t - R_s||_F``.
- ``score = -(d_sem + d_rel)``: higher is better.

For Transformer students (the paper's note for non-CNN students) the class-activation map is replaced by the
last layer's attention map (averaged over heads, padding masked) and the pooled feature by the mean-pooled last
hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compress.data.dataset import Batch
from compress.errors import ModelError
from compress.losses.taps import FeatureTaps
from compress.models.task_model import TaskModel


def gram(x: torch.Tensor) -> torch.Tensor:
    """``normalize(X X^T)`` with rows L2-normalised; ``x``: (B, ...) flattened per sample."""
    flat = x.reshape(x.shape[0], -1).float()
    return F.normalize(flat @ flat.T, dim=1)


def gram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(gram(a) - gram(b)))


@dataclass
class Signature:
    """What DisWOT compares: per-sample semantic maps and pooled features of one batch."""

    semantic: torch.Tensor  # (B, h, w) CAMs, or (B, S, S) attention maps
    pooled: torch.Tensor  # (B, C)
    classes: torch.Tensor  # (K, C) class-activation weights: the linear head's cross-entropy gradient


def class_weights(logits: torch.Tensor, labels: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``(softmax(z) - onehot(y))^T F / B``: d CE / d W of a linear head on the pooled features ``F``."""
    err = logits.detach().float().softmax(-1) - F.one_hot(labels, logits.shape[-1]).float()
    return err.T @ pooled.float() / len(labels)


def cnn_signature(model: TaskModel, batch: Batch, feature_path: str, *, batch_stats: bool = False) -> Signature:
    """Grad-CAM of the true class at ``feature_path`` (a (B, C, h, w) feature map) and its pooled features.

    ``batch_stats``: run batch norm on the batch's statistics (train mode), as training-free scores do for
    randomly initialised candidates, whose running statistics are still the identity."""
    model.module.train(batch_stats)
    with FeatureTaps(model.module, [feature_path]) as feats, torch.enable_grad():
        x = batch["pixel_values"].clone().requires_grad_(True)  # graph reaches the features even if frozen
        logits = model.logits({"pixel_values": x})
        fmap = feats[feature_path]
        if fmap.dim() != 4:
            raise ModelError(f"DisWOT needs a (B, C, h, w) feature map at {feature_path!r}, got {tuple(fmap.shape)}.")
        target = logits.gather(1, batch["labels"][:, None]).sum()
        (grad,) = torch.autograd.grad(target, fmap)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(1)).detach()
    pooled = fmap.detach().mean(dim=(2, 3))
    return Signature(cam, pooled, class_weights(logits, batch["labels"], pooled))


def transformer_signature(model: TaskModel, batch: Batch) -> Signature:
    """Last-layer attention map (mean over heads, padded keys zeroed) and mean-pooled last hidden state."""
    model.module.eval()
    setter = getattr(model.module, "set_attn_implementation", None)
    if setter is not None and getattr(model.module.config, "_attn_implementation", "eager") != "eager":
        setter("eager")  # SDPA kernels return no attention probabilities
    mask = batch["attention_mask"]
    with torch.no_grad():
        out = model.module(  # type: ignore[operator]
            input_ids=batch["input_ids"], attention_mask=mask, output_attentions=True, output_hidden_states=True
        )
    if not out.attentions or out.attentions[-1] is None:
        raise ModelError("the model returns no attention maps; DisWOT needs eager attention (attn_implementation).")
    att = out.attentions[-1].mean(1) * mask[:, None, :] * mask[:, :, None]
    m = mask[..., None].float()
    pooled = (out.hidden_states[-1] * m).sum(1) / m.sum(1).clamp_min(1.0)
    return Signature(att, pooled, class_weights(out.logits, batch["labels"], pooled))


def _resize(cam: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if cam.dim() == 3 and tuple(cam.shape[1:]) != size:
        return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return cam


def diswot_score(teacher: Signature, student: Signature, *, semantic: str = "class") -> dict[str, float]:
    """``{"score": -(d_sem + d_rel), "semantic": d_sem, "relation": d_rel}``."""
    if semantic == "class":
        d_sem = gram_distance(teacher.classes, student.classes)
    else:
        d_sem = gram_distance(teacher.semantic, _resize(student.semantic, tuple(teacher.semantic.shape[1:])))
    d_rel = gram_distance(teacher.pooled, student.pooled)
    return {"score": -(d_sem + d_rel), "semantic": d_sem, "relation": d_rel}


def signature(model: TaskModel, batch: Batch, feature_path: str | None, *, candidate: bool = False) -> Signature:
    """The teacher's signature (``candidate=False``: eval mode) or a random-init candidate's."""
    if model.spec_of_inputs().sequence:  # token sequences: attention maps and [CLS] states
        return transformer_signature(model, batch)
    if feature_path is None:
        raise ModelError("DisWOT on image models needs the path of the last feature map (`feature`).")
    return cnn_signature(model, batch, feature_path, batch_stats=candidate)


def last_feature_path(model: TaskModel) -> str | None:
    """The module whose output is the last spatial feature map (built-in CNNs: the last stage)."""
    paths = model.features
    return paths[-1] if paths else None
