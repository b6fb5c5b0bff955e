"""Search spaces: samples stay inside the declared choices; sub-spaces partition the hidden sizes."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from compress.search.space import CnnSpace, TransformerSpace


def test_cnn_samples_and_mutations_stay_in_the_space() -> None:
    space = CnnSpace(block=["resnet", "mbv2"], stages=[2, 3], depth=[1, 2], width=[8, 16], kernel=[3, 5])
    rng = random.Random(0)
    for _ in range(200):
        a = space.mutate(space.crossover(space.sample(rng), space.sample(rng), rng), rng, 0.5)
        assert a["block"] in space.block and a["kernel"] in space.kernel
        assert len(a["widths"]) == len(a["depths"]) and len(a["widths"]) in space.stages
        assert set(a["widths"]) <= set(space.width) and set(a["depths"]) <= set(space.depth)
        assert a["widths"] == sorted(a["widths"])
        assert (a["expansion"] in space.expansion) if a["block"] == "mbv2" else a["expansion"] == 1
        space.to_spec(a)  # every sample is a buildable CNN


def test_transformer_space_split_partitions_hidden_sizes() -> None:
    space = TransformerSpace(layers=[2, 3], hidden=[64, 96, 128], heads=[2, 4], ffn=[128])
    subs = space.split(2)
    assert [s.hidden for s in subs] == [[64, 96], [128]]
    assert sum(s.size() for s in subs) == space.size() == 12
    assert space.largest() == {"layers": 3, "hidden": 128, "heads": 4, "ffn": 128}
    assert len({str(a) for a in space.all()}) == 12


def test_empty_or_repeated_choices_are_rejected() -> None:
    with pytest.raises(ValidationError, match="give at least one choice"):
        CnnSpace(width=[])
    with pytest.raises(ValidationError, match="choices repeat"):
        TransformerSpace(layers=[2, 2])
    with pytest.raises(ValidationError, match="positive odd"):
        CnnSpace(kernel=[4])
