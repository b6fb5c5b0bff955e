"""How long a stage trains: `max_steps` is honoured, never silently cut to one pass over the data."""

from __future__ import annotations

from compress.config import TrainSchedule
from compress.training.loop import total_steps


def test_max_steps_alone_sets_the_length() -> None:
    assert total_steps(TrainSchedule(max_steps=500, batch_size=10), 100) == 500  # 50 passes over 100 examples


def test_epochs_alone_and_both() -> None:
    assert total_steps(TrainSchedule(epochs=2, batch_size=10), 100) == 20
    assert total_steps(TrainSchedule(epochs=2, max_steps=5, batch_size=10), 100) == 5  # the smaller wins
    assert total_steps(TrainSchedule(epochs=0.5, max_steps=500, batch_size=10), 100) == 5
