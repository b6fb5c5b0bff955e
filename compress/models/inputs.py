"""What a model takes, as exporters, latency tables and cost counters need it: the input names, whether they
are padded token sequences (a dynamic sequence axis; static programs pad to a length), and how a Hugging Face
encoder's attention mask enters a static program. A model family sets it on its members (`Family.input_spec`),
so no exporter or search asks what kind of data a model reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputSpec:
    names: tuple[str, ...]
    sequence: bool  # padded token sequences (a dynamic sequence axis), else fixed-shape tensors (images)
    dummy_token: int = 1  # a token id every vocabulary of the family has (cost counting)
    additive_mask: bool = False  # static programs build the 4-D additive attention mask (Hugging Face encoders)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX dynamic axes: the batch, and the sequence of token inputs."""
        axes: dict[str, dict[int, str]] = {"logits": {0: "batch"}}
        return axes | {n: ({0: "batch", 1: "sequence"} if self.sequence else {0: "batch"}) for n in self.names}

    def static_example(self, batch: int, sequence: int, sample: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Static-shape inputs from a real ``sample``: token inputs padded / cut to ``sequence``, tensors at their
        own size repeated to ``batch``."""
        out = []
        for name in self.names:
            given = sample[name]
            if self.sequence:
                x = torch.zeros(batch, sequence, dtype=given.dtype)
                rows, n = min(batch, given.shape[0]), min(sequence, given.shape[1])
                x[:rows, :n] = given[:rows, :n]
            else:
                x = given[:1].expand(batch, *given.shape[1:]).contiguous()
            out.append(x)
        return tuple(out)

    def dummy(self, sequence: int, shape: tuple[int, ...] | None) -> dict[str, torch.Tensor]:
        """One input of ``sequence`` tokens (or of the per-example ``shape``) for counting costs."""
        if self.sequence:
            ids = torch.full((1, sequence), self.dummy_token, dtype=torch.long)
            return {n: (ids if n == "input_ids" else torch.ones_like(ids)) for n in self.names}
        assert shape is not None, "fixed-shape inputs need the data's per-example shape"
        return {n: torch.zeros((1, *shape)) for n in self.names}


TOKENS = InputSpec(("input_ids", "attention_mask"), sequence=True)
IMAGES = InputSpec(("pixel_values",), sequence=False)
