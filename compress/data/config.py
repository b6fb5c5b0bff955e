"""The recipe's `data` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from compress.config import Strict

TEXT_FORMATS = ("tsv", "csv", "jsonl")
LM_FORMATS = ("jsonl", "text")


class Columns(Strict):
    """Which columns (or JSON keys) hold the text and the label."""

    text: str = Field("sentence", description="Column with the text.")
    text_pair: str | None = Field(None, description="Optional second text column (sentence pairs).")
    label: str = Field("label", description="Column with the label (integers, or strings mapped to ids).")


class SplitFractions(Strict):
    """Fractions held out from `train` when `dev` / `test` are not given (always used for sklearn_digits)."""

    dev: float = Field(0.15, gt=0, lt=0.5, description="Fraction of the data used as the dev split.")
    test: float = Field(0.15, gt=0, lt=0.5, description="Fraction of the data used as the test split.")


class TokenizerTraining(Strict):
    """A byte-level BPE tokenizer trained on the training split (`tokenizers`), for a causal LM trained from
    scratch: it is saved with the teacher, and every later model shares it."""

    vocab_size: int = Field(4096, ge=300, le=262144, description="Vocabulary size, special tokens included.")
    min_frequency: int = Field(2, ge=1, description="A merge must occur at least this often in the training split.")
    max_characters: int | None = Field(
        None, gt=0, description="Train on at most this many characters of the training split (default: all of it)."
    )


class DataConfig(Strict):
    """Where the data comes from and how it is prepared."""

    format: Literal["tsv", "csv", "jsonl", "text", "sklearn_digits", "image_folder"] = Field(
        ...,
        description="tsv / csv / jsonl text files, the built-in sklearn digits, or an image folder "
        "(`<split>/<class>/<image>`). Causal LMs (`task: causal_lm`) read `jsonl` (one document per line, "
        "`columns.text`, default `text`) or `text` (a plain-text file is one document; a folder gives one "
        "document per file).",
    )
    train: str | None = Field(None, description="Training file or folder (relative to the recipe file).")
    dev: str | None = Field(None, description="Dev file or folder, used to pick the best checkpoint.")
    test: str | None = Field(None, description="Test file or folder: every reported accuracy is on this split.")
    columns: Columns = Field(default_factory=Columns, description="Column mapping for text files.")  # type: ignore[arg-type]
    max_length: int = Field(
        128,
        gt=0,
        le=8192,
        description="Truncate tokenised text to this many tokens (default: `deploy.sequence`, else 128). For a "
        "causal LM, the block length: each document is cut into blocks of this many tokens (blocks never span "
        "two documents; a document's last block is padded).",
    )
    max_train_samples: int | None = Field(
        None, gt=0, description="Use only the first N training examples (blocks for a causal LM)."
    )
    max_eval_samples: int | None = Field(
        None, gt=0, description="Use only the first N dev and test examples (blocks for a causal LM)."
    )
    split: SplitFractions = Field(default_factory=SplitFractions, description="Hold-out fractions.")  # type: ignore[arg-type]
    image_size: int | None = Field(None, gt=0, description="Resize images to this square size (image_folder).")
    grayscale: bool = Field(False, description="Load images as one channel (image_folder).")
    tokenizer: TokenizerTraining | None = Field(
        None,
        description="Causal LMs trained from scratch: train a byte-level BPE tokenizer on the training split "
        "(default: the teacher's own tokenizer).",
    )
    _task: str = PrivateAttr("classification")  # the recipe's `task`, set by the recipe

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.format != "sklearn_digits" and not self.train:
            raise ValueError(f"format {self.format} needs a `train` path")
        if self.format == "sklearn_digits" and (self.train or self.dev or self.test):
            raise ValueError("sklearn_digits is built in: remove train/dev/test")
        return self

    @property
    def modality(self) -> Literal["text", "image", "lm"]:
        """What the data is: labelled text, images, or text for a causal language model (`task: causal_lm`)."""
        if self._task == "causal_lm" or self.format == "text":
            return "lm"
        return "text" if self.format in TEXT_FORMATS else "image"

    @property
    def tokenized(self) -> bool:
        """Whether the data are token sequences (tokenised with the teacher's tokenizer)."""
        return self.modality != "image"

    def text_key(self) -> str:
        """The JSON key of a language-model document (`columns.text` when given, else `text`)."""
        return self.columns.text if "text" in self.columns.model_fields_set else "text"
