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


# ---- SinKD and RKD (issue "Make the methods pay") ----------------------------------------------------------------
def _softmax(row: list[float], temp: float) -> list[float]:
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def test_sinkhorn_kd_matches_hand_computation() -> None:
    s, t = [[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]
    temp, eps, rounds = 2.0, 0.1, 20
    ps, pt = [_softmax(r, temp) for r in s], [_softmax(r, temp) for r in t]
    cost = [[sum(abs(a - b) for a, b in zip(ps[i], pt[j], strict=True)) for j in range(2)] for i in range(2)]
    plan = [[math.exp(-cost[i][j] / eps) for j in range(2)] for i in range(2)]
    for _ in range(rounds):  # rows then columns, each summing to one
        plan = [[plan[i][j] / sum(plan[i]) for j in range(2)] for i in range(2)]
        cols = [plan[0][j] + plan[1][j] for j in range(2)]
        plan = [[plan[i][j] / cols[j] for j in range(2)] for i in range(2)]
    expected = sum(plan[i][j] * cost[i][j] for i in range(2) for j in range(2)) / 2
    got = F.sinkhorn_kd_loss(torch.tensor(s), torch.tensor(t), temperature=temp, epsilon=eps, iterations=rounds)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sinkhorn_kd_is_near_zero_when_the_student_matches_and_trains_only_the_student() -> None:
    t = torch.tensor([[4.0, -4.0, 0.0], [-4.0, 4.0, 0.0], [0.0, 0.0, 6.0]])
    assert F.sinkhorn_kd_loss(t, t, epsilon=0.05).item() < 1e-3  # the plan sits on the zero-cost diagonal
    s = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    teacher = t.clone().requires_grad_(True)
    F.sinkhorn_kd_loss(s, teacher).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and teacher.grad is None


def test_rkd_distance_and_angle_match_hand_computation() -> None:
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # a 3-4-5 right triangle
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # a right isosceles triangle
    mu_s, mu_t = (3 + 4 + 5) / 3, (1 + 1 + math.sqrt(2)) / 3
    ds = {(0, 1): 3 / mu_s, (0, 2): 4 / mu_s, (1, 2): 5 / mu_s}
    dt = {(0, 1): 1 / mu_t, (0, 2): 1 / mu_t, (1, 2): math.sqrt(2) / mu_t}

    def huber(a: float, b: float) -> float:
        x = abs(a - b)
        return 0.5 * x * x if x < 1 else x - 0.5

    distance = 2 * sum(huber(ds[k], dt[k]) for k in ds) / 9  # both orders of each pair; the diagonal is 0 = 0
    got = F.rkd_loss(s, t, distance_weight=1.0, angle_weight=0.0)
    assert got.item() == pytest.approx(distance, rel=1e-5)

    def cosines(p: list[tuple[float, float]]) -> dict[tuple[int, int, int], float]:
        out = {}
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    if i == j or k == j:
                        out[(j, i, k)] = 0.0
                        continue
                    a = (p[i][0] - p[j][0], p[i][1] - p[j][1])
                    b = (p[k][0] - p[j][0], p[k][1] - p[j][1])
                    out[(j, i, k)] = (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))
        return out

    cs, ct = cosines(s.tolist()), cosines(t.tolist())
    angle = sum(huber(cs[k], ct[k]) for k in cs) / 27
    got = F.rkd_loss(s, t, distance_weight=0.0, angle_weight=1.0)
    assert got.item() == pytest.approx(angle, rel=1e-5)


def test_rkd_ignores_width_and_scale_and_trains_only_the_student() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 8, generator=g)
    same = torch.cat([2.5 * t, torch.zeros(6, 4)], dim=1)  # wider, scaled: the same relations
    assert F.rkd_loss(same, t).item() == pytest.approx(0.0, abs=1e-5)
    s = torch.randn(6, 5, generator=g, requires_grad=True)
    teacher = t.clone().requires_grad_(True)
    loss = F.rkd_loss(s, teacher)
    loss.backward()
    assert loss.item() > 0 and s.grad is not None and teacher.grad is None
