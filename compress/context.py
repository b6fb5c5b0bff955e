"""What every stage may use besides its input artifacts: the recipe, folders, data and loaded models."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from compress.data.dataset import DataBundle, fingerprint, load_data
from compress.errors import StageError
from compress.training.engine import Engine, Session

if TYPE_CHECKING:
    from compress.artifacts import Artifact
    from compress.models.task_model import TaskModel
    from compress.recipe.schema import Recipe

log = logging.getLogger("compress")


@dataclass
class Context:
    recipe: Recipe
    recipe_path: Path
    out_dir: Path
    stage_dir: Path = Path()
    _data: DataBundle | None = None
    _fingerprint: str | None = None
    tokenizer_folder: Path | None = None
    engine: Engine = field(default_factory=Engine.single_cpu)
    checkpoints: Path | None = None  # this stage's training checkpoints (set by the pipeline)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the recipe are relative to the recipe file."""
        return self.recipe_path.parent

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / ".cache"

    def session(self) -> Session:
        """What the stage's training calls share: engine, seed, checkpoint folder."""
        return Session(self.engine, self.seed, self.checkpoints)

    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.recipe.data, self.base_dir)
        return self._fingerprint

    def data(self) -> DataBundle:
        """The recipe's splits, loaded once (text is tokenised with the teacher's tokenizer)."""
        if self._data is None:
            tokenizer = None
            if self.recipe.data.modality in ("text", "lm"):
                if self.tokenizer_folder is None:
                    raise StageError("text data needs the teacher's tokenizer, but no teacher is loaded yet.")
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_folder)
            self._data = load_data(self.recipe.data, self.base_dir, tokenizer, self.seed)
            d = self._data
            if d.modality == "lm":
                log.info("data: %d / %d / %d blocks of up to %d tokens (train / dev / test), vocabulary %d",
                         len(d.train), len(d.dev), len(d.test), self.recipe.data.max_length, d.num_labels)  # fmt: skip
            else:
                log.info("data: %d train / %d dev / %d test examples, %d labels", len(d.train), len(d.dev),
                         len(d.test), d.num_labels)  # fmt: skip
        return self._data

    def label_info(self) -> tuple[int, int | None]:
        """Labels and image channels come from the data; text data needs a tokenizer, so only its label columns
        are read here (the teacher is built before the tokenizer it brings). Causal-LM data has no labels (0)."""
        cfg = self.recipe.data
        if cfg.modality == "lm":  # next-token prediction: the vocabulary comes with the tokenizer
            return 0, None
        if cfg.modality == "image":
            d = self.data()
            return d.num_labels, d.in_channels
        from compress.data import text

        labels = {}
        for key in ("train", "dev", "test"):
            value = getattr(cfg, key)
            if value:
                path = self.base_dir / value
                labels[key] = (path, text.extract(text.read_rows(path, cfg.format), cfg, path)[2])
        mapping = text.label_mapping(labels, cfg.columns.label)
        return max(mapping.values()) + 1, None

    def load_model(self, artifact: Artifact) -> TaskModel:
        """Load a model artifact (a fresh copy each call: stages may train it in place)."""
        from compress.families import load

        if artifact.kind != "model":
            raise StageError(f"artifact {artifact.name!r} is {artifact.kind}, not a PyTorch model.")
        return load(artifact.path)
