"""What every stage may use besides its input artifacts: the recipe's data section and seed, folders, data and
loaded models. Not the recipe: a stage's settings reach it through its own config, and shapes through the data
it is given."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.data.config import DataConfig
from compress.data.dataset import DataBundle, fingerprint, label_info, load_data
from compress.errors import StageError
from compress.training.engine import Engine, Session

if TYPE_CHECKING:
    from compress.artifacts import Artifact
    from compress.models.task_model import TaskModel

log = logging.getLogger("compress")


@dataclass
class Context:
    data_config: DataConfig
    seed: int
    recipe_path: Path
    out_dir: Path
    stage_dir: Path = Path()
    _data: DataBundle | None = None
    _fingerprint: str | None = None
    tokenizer_folder: Path | None = None
    engine: Engine = field(default_factory=Engine.single_cpu)
    checkpoints: Path | None = None  # this stage's training checkpoints (set by the pipeline)

    @classmethod
    def of(cls, recipe: Any, recipe_path: Path, out_dir: Path, **kwargs: Any) -> Context:
        """The context of a recipe (a `recipe.schema.Recipe`: its `data` and `seed`)."""
        return cls(recipe.data, recipe.seed, recipe_path, out_dir, **kwargs)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the recipe are relative to the recipe file."""
        return self.recipe_path.parent

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / ".cache"

    def session(self) -> Session:
        """What the stage's training calls share: engine, seed, checkpoint folder."""
        return Session(self.engine, self.seed, self.checkpoints)

    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.data_config, self.base_dir)
        return self._fingerprint

    def data(self) -> DataBundle:
        """The recipe's splits, loaded once (token data are tokenised with the teacher's tokenizer)."""
        if self._data is None:
            tokenizer = None
            if self.data_config.tokenized:
                if self.tokenizer_folder is None:
                    raise StageError("text data needs the teacher's tokenizer, but no teacher is loaded yet.")
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_folder)
            self._data = load_data(self.data_config, self.base_dir, tokenizer, self.seed)
            log.info("data: %s", self._data.describe())
        return self._data

    def label_info(self) -> tuple[int, int | None]:
        """Labels and image channels of the data, before the teacher is built (`data.dataset.label_info`)."""
        return label_info(self.data_config, self.base_dir, self.data)

    def load_model(self, artifact: Artifact) -> TaskModel:
        """Load a model artifact (a fresh copy each call: stages may train it in place)."""
        from compress.families import load

        if artifact.kind != "model":
            raise StageError(f"artifact {artifact.name!r} is {artifact.kind}, not a PyTorch model.")
        return load(artifact.path)
