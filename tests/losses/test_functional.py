import math

import pytest
import torch

from compress.losses import functional as F


def test_kd_matches_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    temp = 2.0
    ps = torch.softmax(s / temp, -1)[0].tolist()
    pt = torch.softmax(t / temp, -1)[0].tolist()
    expected = temp**2 * sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    assert F.kd_loss(s, t, temperature=temp).item() == pytest.approx(expected, rel=1e-5)


def test_kd_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    x = torch.randn(4, 5)
    assert F.kd_loss(x, x, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert F.kd_loss(x, x.flip(-1), temperature=3.0).item() > 0


def test_ce_matches_hand_computation() -> None:
    s = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 0])
    expected = -(math.log(math.exp(2) / (math.exp(2) + math.e)) + math.log(1 / (1 + math.exp(3)))) / 2
    assert F.ce_loss(s, y).item() == pytest.approx(expected, rel=1e-5)


def test_hint_loss_ignores_padding() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert F.hint_loss(s, t, mask=mask).item() == pytest.approx((1 + 1 + 9 + 9) / 4)


def test_attention_relation_by_hand() -> None:
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # B=1, S=2, D=2, one head
    rel = F.attention_relation(x, 1, None).exp()[0, 0]
    a = math.exp(1 / math.sqrt(2))
    assert rel[0, 0].item() == pytest.approx(a / (a + 1), rel=1e-5)
    assert rel[0, 1].item() == pytest.approx(1 / (a + 1), rel=1e-5)


def test_minilm_relation_loss_zero_iff_same_relations_and_mask_respected() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 5, 8) for _ in range(3))
    assert F.minilm_relation_loss([q, k, v], [q, k, v], relation_heads=2).item() == pytest.approx(0, abs=1e-6)
    other = [torch.randn(2, 5, 8) for _ in range(3)]
    assert F.minilm_relation_loss(other, [q, k, v], relation_heads=2).item() > 0.01
    # different widths are fine as long as the relation heads divide both
    wide = [torch.randn(2, 5, 12) for _ in range(3)]
    assert F.minilm_relation_loss(wide, [q, k, v], relation_heads=4).item() > 0
    # changing padded positions does not change the loss
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = F.minilm_relation_loss(other, [q, k, v], relation_heads=2, mask=mask)
    edited = [o.clone() for o in other]
    for o in edited:
        o[0, 3:] = 100.0
    assert F.minilm_relation_loss(edited, [q, k, v], relation_heads=2, mask=mask).item() == pytest.approx(base.item())


def test_attention_map_loss_matches_hand_computation() -> None:
    # one layer, batch 1, 2 heads, 2 queries (the second is padding), 2 keys
    t = torch.tensor([[[[0.75, 0.25], [0.5, 0.5]], [[0.5, 0.5], [0.9, 0.1]]]])
    s = torch.tensor([[[[0.5, 0.5], [0.1, 0.9]], [[0.25, 0.75], [0.2, 0.8]]]])
    mask = torch.tensor([[1, 0]])

    def kl(p: list[float], q: list[float]) -> float:
        return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))

    expected = (kl([0.75, 0.25], [0.5, 0.5]) + kl([0.5, 0.5], [0.25, 0.75])) / 2  # heads of the one real query
    assert F.attention_map_loss([s], [t], mask=mask).item() == pytest.approx(expected, rel=1e-5)
    assert F.attention_map_loss([t, t], [t, t], mask=mask).item() == pytest.approx(0.0, abs=1e-7)
    unmasked = (expected * 2 + kl([0.5, 0.5], [0.1, 0.9]) + kl([0.9, 0.1], [0.2, 0.8])) / 4
    assert F.attention_map_loss([s], [t]).item() == pytest.approx(unmasked, rel=1e-5)


def test_attention_output_loss_matches_hand_computation() -> None:
    s = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])
    t = torch.tensor([[[0.0, 4.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    assert F.attention_output_loss([s], [t], mask=mask).item() == pytest.approx((1 + 4) / 2)
    assert F.attention_output_loss([s, t], [t, t], mask=mask).item() == pytest.approx((1 + 4) / 2 / 2)
