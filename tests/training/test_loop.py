"""How long a stage trains: `max_steps` is honoured, never silently cut to one pass over the data."""

from __future__ import annotations

import torch

from compress.config import TrainSchedule
from compress.training.loop import total_steps


def test_max_steps_alone_sets_the_length() -> None:
    assert total_steps(TrainSchedule(max_steps=500, batch_size=10), 100) == 500  # 50 passes over 100 examples


def test_epochs_alone_and_both() -> None:
    assert total_steps(TrainSchedule(epochs=2, batch_size=10), 100) == 20
    assert total_steps(TrainSchedule(epochs=2, max_steps=5, batch_size=10), 100) == 5  # the smaller wins
    assert total_steps(TrainSchedule(epochs=0.5, max_steps=500, batch_size=10), 100) == 5


def test_adamw_is_fused_on_a_cpu_and_updates_like_the_default() -> None:
    from compress.training.loop import adamw

    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(w) for w in weights]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    plain_params = [torch.nn.Parameter(w.clone()) for w in weights]
    groups = [{"params": fused_params[:1], "weight_decay": 0.01}, {"params": fused_params[1:], "weight_decay": 0.0}]
    fused = adamw(groups, lr=1e-2)
    plain = torch.optim.AdamW([{"params": plain_params[:1], "weight_decay": 0.01},
                               {"params": plain_params[1:], "weight_decay": 0.0}], lr=1e-2)  # fmt: skip
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for _ in range(3):
        for opt, params in ((fused, fused_params), (plain, plain_params)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b, w in zip(fused_params, plain_params, weights, strict=True):
        assert not torch.equal(a, w) and torch.allclose(a, b, atol=1e-6)


def test_group_by_length_covers_the_epoch_once_with_batches_of_similar_length() -> None:
    from compress.training.loop import epoch_batches

    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, 65, (1000,), generator=gen).tolist()
    plain = epoch_batches(1000, 8, seed=3)
    grouped = epoch_batches(1000, 8, seed=3, lengths=lengths)
    assert sorted(torch.cat(grouped).tolist()) == list(range(1000))  # every example once
    again = epoch_batches(1000, 8, seed=3, lengths=lengths)
    assert len(grouped) == len(plain) and [b.tolist() for b in grouped] == [b.tolist() for b in again]  # seeded

    def padded(batches: list[torch.Tensor]) -> int:  # tokens a batch pads to: its longest example, per row
        return sum(len(b) * max(lengths[i] for i in b.tolist()) for b in batches)

    assert padded(grouped) < 1.05 * sum(lengths) < 0.7 * padded(plain)  # little padding left
    other = epoch_batches(1000, 8, seed=4, lengths=lengths)
    assert [b.tolist() for b in other] != [b.tolist() for b in grouped]  # the epochs' orders differ


def test_predict_logits_in_length_order_gives_each_example_its_own_logits() -> None:
    from compress.data.dataset import Split
    from compress.models.task_model import TaskModel
    from compress.training.evaluate import predict_logits

    class Lengths(torch.nn.Module):  # logits = (length, first token): which example each row came from
        def __init__(self) -> None:
            super().__init__()
            self.one = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.one * torch.stack([attention_mask.sum(-1).float(), input_ids[:, 0].float()], -1)

    features = [[i] * n for i, n in enumerate([5, 1, 9, 3, 7, 2])]
    split = Split("dev", features, torch.zeros(6, dtype=torch.long))
    logits = predict_logits(TaskModel(Lengths(), "python", "text", 2), split, batch_size=4)
    assert logits.tolist() == [[float(len(f)), float(f[0])] for f in features]
