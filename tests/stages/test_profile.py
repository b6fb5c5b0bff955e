"""`profile`'s rounds: each artifact's statistics come from its fastest round, every round's p50 kept."""

from compress.stages.profile import fastest_round


def test_the_fastest_round_is_kept_with_every_rounds_p50_and_the_operator_profile() -> None:
    rounds = [
        {"p50_ms": 3.0, "p90_ms": 3.5, "top_ops": [{"op": "MatMul", "us": 10.0, "share": 1.0}]},
        {"p50_ms": 2.0, "p90_ms": 4.0},  # the fastest by p50, though not by p90: p50 is what a speed-up divides
        {"p50_ms": 2.5, "p90_ms": 2.6},
    ]
    best = fastest_round(rounds)
    assert (best["p50_ms"], best["p90_ms"]) == (2.0, 4.0)
    assert best["rounds_p50_ms"] == [3.0, 2.0, 2.5]
    assert best["top_ops"] == rounds[0]["top_ops"]  # profiled in the first round only
    assert "rounds_p50_ms" not in rounds[1]  # the inputs are not modified
    # one round: its statistics as they are
    assert fastest_round([{"p50_ms": 1.0}]) == {"p50_ms": 1.0}
