"""Which teacher layer a student layer stands for when nothing says otherwise: every family's default."""

from __future__ import annotations


def evenly_spaced(student_layers: int, teacher_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the last one, e.g. 3 of 6 -> [1, 3, 5]."""
    step = teacher_layers / student_layers
    return [round(step * (i + 1)) - 1 for i in range(student_layers)]
