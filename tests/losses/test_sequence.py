"""Token-level sequence losses against hand computations (plain Python over explicit probabilities), their masks,
their limits, and TAID's schedule."""

from __future__ import annotations

import math

import pytest
import torch

from compress.losses import sequence as S

# one sequence of 3 positions over a vocabulary of 3; the last position is padding (mask 0)
ZS = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [3.0, -2.0, 0.0]]])
ZT = torch.tensor([[[2.0, 0.0, 0.0], [-1.0, 1.0, 0.5], [0.0, 0.0, 9.0]]])
MASK = torch.tensor([[1, 1, 0]])


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def by_hand(divergence) -> float:  # noqa: ANN001 - (p, q) -> float over the two unmasked positions
    values = [divergence(softmax(ZT[0, i].tolist()), softmax(ZS[0, i].tolist()), i) for i in (0, 1)]
    return sum(values) / len(values)


def close(a: torch.Tensor, b: float) -> None:
    assert float(a) == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_forward_and_reverse_kl_match_a_hand_computation() -> None:
    close(S.forward_kl(ZS, ZT, mask=MASK), by_hand(lambda p, q, i: kl(p, q)))
    close(S.reverse_kl(ZS, ZT, mask=MASK), by_hand(lambda p, q, i: kl(q, p)))


def test_forward_kl_with_temperature_matches_a_hand_computation() -> None:
    t = 2.0

    def div(p: list[float], q: list[float], i: int) -> float:
        return t * t * kl(softmax([v / t for v in ZT[0, i].tolist()]), softmax([v / t for v in ZS[0, i].tolist()]))

    close(S.forward_kl(ZS, ZT, mask=MASK, temperature=t), by_hand(div))


def test_skew_kls_match_a_hand_computation() -> None:
    a = 0.1

    def mix(x: list[float], y: list[float], w: float) -> list[float]:
        return [w * u + (1 - w) * v for u, v in zip(x, y, strict=True)]

    close(S.skew_kl(ZS, ZT, alpha=a, mask=MASK), by_hand(lambda p, q, i: kl(p, mix(p, q, a))))
    close(S.skew_reverse_kl(ZS, ZT, alpha=a, mask=MASK), by_hand(lambda p, q, i: kl(q, mix(q, p, a))))


def test_generalized_jsd_matches_a_hand_computation() -> None:
    b = 0.3

    def jsd(p: list[float], q: list[float], i: int) -> float:
        m = [b * u + (1 - b) * v for u, v in zip(p, q, strict=True)]
        return b * kl(p, m) + (1 - b) * kl(q, m)

    close(S.generalized_jsd(ZS, ZT, beta=b, mask=MASK), by_hand(jsd))


def test_taid_matches_a_hand_computation_and_its_target_is_detached() -> None:
    t = 0.4

    def div(p: list[float], q: list[float], i: int) -> float:
        target = softmax([(1 - t) * s + t * u for s, u in zip(ZS[0, i].tolist(), ZT[0, i].tolist(), strict=True)])
        return kl(target, q)

    close(S.taid_loss(ZS, ZT, t=t, mask=MASK), by_hand(div))
    # the gradient flows through q alone: d/dz_q KL(p_t || q) = q - p_t per position
    zs = ZS.clone().requires_grad_(True)
    S.taid_loss(zs, ZT, t=t, mask=MASK).backward()
    assert zs.grad is not None
    for i in (0, 1):
        q = torch.softmax(ZS[0, i], -1)
        p_t = torch.softmax((1 - t) * ZS[0, i] + t * ZT[0, i], -1)
        assert torch.allclose(zs.grad[0, i], (q - p_t) / 2, atol=1e-6)
    assert torch.all(zs.grad[0, 2] == 0)  # padding gets no gradient


def test_the_limits_hold() -> None:
    fkl = S.forward_kl(ZS, ZT, mask=MASK)
    close(S.skew_kl(ZS, ZT, alpha=0.0, mask=MASK), float(fkl))
    close(S.skew_reverse_kl(ZS, ZT, alpha=0.0, mask=MASK), float(S.reverse_kl(ZS, ZT, mask=MASK)))
    close(S.taid_loss(ZS, ZT, t=1.0, mask=MASK), float(fkl))
    assert float(S.taid_loss(ZS, ZT, t=0.0, mask=MASK)) == pytest.approx(0.0, abs=1e-6)  # the student's own target
    for loss in (S.forward_kl, S.reverse_kl, S.generalized_jsd):
        assert float(loss(ZT, ZT, mask=MASK)) == pytest.approx(0.0, abs=1e-6)  # type: ignore[operator]


def test_padding_positions_do_not_count() -> None:
    other = ZS.clone()
    other[0, 2] = torch.tensor([-50.0, 50.0, 0.0])  # the padded position changes wildly
    for loss in (S.forward_kl, S.reverse_kl, S.skew_kl, S.skew_reverse_kl, S.generalized_jsd):
        assert float(loss(other, ZT, mask=MASK)) == pytest.approx(float(loss(ZS, ZT, mask=MASK)))  # type: ignore[operator]


def test_taid_schedule_is_monotone_at_least_linear_and_faster_while_the_loss_falls() -> None:
    sched = S.TaidSchedule(t_start=0.4, t_end=1.0, alpha=0.05, beta=0.5)

    def run(losses: list[float]) -> list[float]:
        state = {"t": torch.tensor(0.4, dtype=torch.float64), "momentum": torch.zeros((), dtype=torch.float64),
                 "previous": torch.tensor(math.nan, dtype=torch.float64), "step": torch.zeros((), dtype=torch.int64)}
        ts = []
        for n, value in enumerate(losses, 1):
            sched.update(state, value, n, 100)
            ts.append(float(state["t"]))
        return ts

    falling = run([10.0 * 0.8**n for n in range(20)])
    flat = run([1.0] * 20)
    assert all(b >= a for a, b in zip(falling, falling[1:], strict=False))
    assert all(t >= 0.4 + 0.6 * n / 100 - 1e-12 for n, t in enumerate(falling, 1))
    assert falling[-1] > flat[-1]
    assert run([1.0] * 100)[-1] == pytest.approx(1.0)  # t_end by the last step


def test_the_taid_term_keeps_its_state_in_buffers_and_advances_once_per_step() -> None:
    from compress.losses.terms import Captured

    term = S.TaidTerm(S.TaidConfig(name="taid", alpha=0.5))
    batch = {"attention_mask": MASK}
    zs = ZS.clone().requires_grad_(True)
    term(Captured(zs), Captured(ZT), batch)
    term.advance(1, 10)
    t1 = term.interpolation()
    assert t1 > 0.4 and set(dict(term.named_buffers())) == {"t", "momentum", "previous", "step"}
    term.advance(1, 10)  # a resumed run calls on_step with the step it starts from: no second update
    assert term.interpolation() == t1
    again = S.TaidTerm(S.TaidConfig(name="taid", alpha=0.5))
    again.load_state_dict(term.state_dict())
    assert again.interpolation() == t1
