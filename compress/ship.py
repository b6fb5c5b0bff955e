"""The ship folder: per profiled device, the headline artifact and everything needed to run it without compress.

`export/<name>/ship/<device>/` holds:

- `model.onnx` (or `model.pte`): the headline artifact under a stable name;
- `config.json`: the Hugging Face config of the model it came from (transformers models) or a small config of
  our own (other models), with `id2label` / `label2id` from the data's label names and the input names;
- the tokenizer files (text and causal LMs), `preprocessor_config.json` (images: size, rescale, normalisation in
  Hugging Face image-processor terms), `kv_cache.json` (causal LMs: the graph's cache inputs and outputs);
- `recipe.yaml` (the recipe that made it), `ship.json` (what the card says, for scripts) and `README.md`, a model
  card in the Hugging Face format: what it was compressed from, how, accuracy on the deployed runtime, latency
  with the CPU and runtime that measured it, and the budgets' verdict.

For text classifiers and causal LMs the folder follows the layout optimum's ONNX Runtime classes load
(`ORTModelForSequenceClassification` / `ORTModelForCausalLM.from_pretrained(folder)`: `model.onnx` beside
`config.json` and the tokenizer). Where it differs: our classifier graphs take `input_ids` and
`attention_mask` only (optimum feeds what the session asks for, so `token_type_ids` is not needed), and our
KV-cache graphs name their cache `past.N.key` / `present.N.key` where optimum expects `past_key_values.N.key`
(`kv_cache.json` gives the names, so a plain onnxruntime loop needs nothing else).

Each card records the accuracy of the shipped file on the first `CHECK_EXAMPLES` test examples, one at a time on
onnxruntime, computed through compress's own data pipeline: a user (and `tests/test_ship.py`) reproduces it from
the folder alone with onnxruntime and the tokenizer.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.artifacts import Artifact, Artifacts
from compress.fileio import atomic_write_json

if TYPE_CHECKING:
    from compress.data.dataset import DataBundle

log = logging.getLogger("compress")
CHECK_EXAMPLES = 64
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "sentencepiece.bpe.model", "spiece.model")  # fmt: skip


def _source_model(art: Artifact, artifacts: Artifacts) -> Artifact | None:
    """The PyTorch model artifact a deployable file was made from (its nearest `model` ancestor)."""
    seen: set[str] = set()
    node: Artifact | None = art
    while node is not None and node.name not in seen:
        if node.kind == "model":
            return node
        seen.add(node.name)
        node = artifacts.get(node.parent or "")
    return None


def _lineage(art: Artifact, artifacts: Artifacts) -> list[str]:
    out, node, seen = [], art, set()
    while node is not None and node.name not in seen:
        out.append(f"{node.name} ({node.stage})")
        seen.add(node.name)
        node = artifacts.get(node.parent or "")  # type: ignore[assignment]
    return out


def _config(model: Artifact | None, data: DataBundle, input_names: list[str]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    hf_config = model.path / "config.json" if model is not None else None
    if hf_config is not None and hf_config.is_file():
        cfg = json.loads(hf_config.read_text())
    else:
        from compress.models.task_model import META_FILE

        meta = model.path / META_FILE if model is not None else None
        spec = json.loads(meta.read_text()) if meta is not None and meta.is_file() else {}
        cfg = {"model_type": f"compress-{spec.get('kind', 'model')}", "compress_spec": spec.get("spec", {})}
    if data.label_names:
        cfg["id2label"] = {str(i): str(n) for i, n in enumerate(data.label_names)}
        cfg["label2id"] = {str(n): i for i, n in enumerate(data.label_names)}
        cfg["num_labels"] = len(data.label_names)
    cfg["compress_inputs"] = input_names
    if data.max_length:
        cfg["compress_max_length"] = data.max_length
    return cfg


def _preprocessor(data: DataBundle, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """Image preprocessing in Hugging Face image-processor terms (what `data/images.py` does)."""
    if data.modality != "image":
        return None
    d = recipe.get("data") or {}
    shape = list(data.train.features[0].shape)
    if d.get("format") == "sklearn_digits":  # 8x8 grey images, 0..16, scaled to 0..1 and not normalised
        return {"image_processor_type": "compress", "do_resize": False, "size": {"height": 8, "width": 8},
                "do_rescale": True, "rescale_factor": 1 / 16, "do_normalize": False, "channels": 1,
                "input_shape": shape}  # fmt: skip
    channels = shape[0]
    return {"image_processor_type": "compress", "do_resize": bool(d.get("image_size")),
            "size": {"height": shape[1], "width": shape[2]}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.5] * channels, "image_std": [0.5] * channels,
            "do_convert_grayscale": channels == 1, "channel_order": "CHW", "input_shape": shape}  # fmt: skip


def _check(path: Path, data: DataBundle) -> dict[str, Any] | None:
    """Accuracy of the shipped ONNX file on the first test examples, one at a time on onnxruntime."""
    if path.suffix != ".onnx" or data.modality == "lm":
        return None
    from compress.evaluation import onnx_logits, predictor

    sub = data.test.subset(CHECK_EXAMPLES)
    logits = onnx_logits(predictor("onnxruntime", path), sub, 1, f"ship check {path.parent.name}")
    correct = int((logits.argmax(-1) == sub.labels.numpy()).sum())
    return {"examples": len(sub), "correct": correct, "accuracy": correct / max(len(sub), 1),
            "runtime": "onnxruntime", "batch": 1}  # fmt: skip


def write_ship_folders(
    report: dict[str, Any], artifacts: Artifacts, out_dir: Path, recipe_path: Path, data: Callable[[], DataBundle]
) -> list[Path]:
    """One ship folder per headline item (see the module docstring); each is written beside its final place and
    renamed into it, so a folder that exists is complete."""
    root = out_dir / "ship"
    made = []
    checks: dict[str, dict[str, Any] | None] = {}  # per artifact: two devices may ship the same file
    for item in report.get("headline") or []:
        art = artifacts.get(item["artifact"])
        if art is None or art.kind not in ("onnx", "pte"):
            continue
        made.append(_write_one(item, art, report, artifacts, root, recipe_path, data(), checks))
    if made:
        report["ship"] = {p.name: p.relative_to(out_dir).as_posix() for p in made}
    return made


def _write_one(
    item: dict[str, Any], art: Artifact, report: dict[str, Any], artifacts: Artifacts, root: Path, recipe_path: Path,
    data: DataBundle, checks: dict[str, dict[str, Any] | None],
) -> Path:  # fmt: skip
    device = item["device"]
    final, tmp = root / device, root / f".tmp-{device}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model_file = tmp / f"model{art.path.suffix}"
    shutil.copyfile(art.path, model_file)
    source = _source_model(art, artifacts)
    input_names = _input_names(model_file)
    atomic_write_json(tmp / "config.json", _config(source, data, input_names))
    if source is not None:
        for name in TOKENIZER_FILES:
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, tmp / name)
    pre = _preprocessor(data, report["recipe"])
    if pre is not None:
        atomic_write_json(tmp / "preprocessor_config.json", pre)
    if art.info.get("kv_cache"):
        atomic_write_json(tmp / "kv_cache.json", art.info["kv_cache"])
    if recipe_path.is_file():
        shutil.copyfile(recipe_path, tmp / "recipe.yaml")
    row = next(r for r in report["artifacts"] if r["name"] == art.name)
    facts = {
        "artifact": art.name, "file": model_file.name, "sha256": art.sha256, "size_bytes": art.size_bytes,
        "precision": art.precision, "device": device, "why": item["why"], "lineage": _lineage(art, artifacts),
        "metrics": art.metrics, "accuracy_on_device": item.get("accuracy"), "latency": row["latency"].get(device, {}),
        "measurement": (report.get("measurement") or {}).get(device, {}), "speedup_vs_teacher":
        item.get("speedup_vs_teacher"), "teacher_artifact": item.get("teacher_artifact"),
        "budgets": [c for c in report.get("budgets") or [] if c["device"] == device and c["artifact"] == art.name],
        "budget_verdict": item["budgets"],
        "check": checks[art.name] if art.name in checks else checks.setdefault(art.name, _check(model_file, data)),
    }  # fmt: skip
    atomic_write_json(tmp / "ship.json", facts)
    (tmp / "README.md").write_text(model_card(facts, report), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    log.info("ship: %s -> %s", art.name, final)
    return final


def _input_names(path: Path) -> list[str]:
    if path.suffix != ".onnx":
        return []
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in init]


def model_card(facts: dict[str, Any], report: dict[str, Any]) -> str:
    """A Hugging Face model card (YAML front matter, then prose) for a ship folder."""
    recipe = report["recipe"]
    teacher = {k: v for k, v in (recipe.get("teacher") or {}).items() if v not in (None, False, {}, [])}
    base = next((str(v) for k, v in teacher.items()
                 if k in ("hf", "hf_package", "gguf", "gguf_package") and isinstance(v, str)), None)  # fmt: skip
    given = ", ".join(f"{k}: {json.dumps(v)}" for k, v in teacher.items())
    metrics = facts["metrics"]
    quality = ("perplexity", metrics["perplexity"]) if "perplexity" in metrics else (
        "accuracy", facts["accuracy_on_device"])  # fmt: skip
    front = ["---", "library_name: onnx" if facts["file"].endswith(".onnx") else "library_name: executorch",
             "tags: [compress, " + ("onnx" if facts["file"].endswith(".onnx") else "executorch") + "]"]  # fmt: skip
    if base:
        front.append(f"base_model: {json.dumps(base)}")
    front += ["model-index:", f"- name: {json.dumps(recipe.get('name', 'model') + '-' + facts['device'])}",
              "  results:", "  - task: {type: " + ("text-generation" if quality[0] == "perplexity"
              else "classification") + "}", "    metrics:",
              f"    - {{type: {quality[0]}, value: {quality[1]}}}", "---", ""]  # fmt: skip
    lat, m = facts["latency"], facts["measurement"]
    cpu = m.get("cpu") or {}
    flags = ", ".join(cpu.get("flags") or []) or "none listed"
    lines = [
        f"# {recipe.get('name', 'model')} for {facts['device']}", "",
        f"`{facts['file']}` is `{facts['artifact']}` ({facts['precision']}), picked as the {facts['why']}.", "",
        "## How it was made", "",
        f"Compressed from the teacher `{given}` by the recipe in `recipe.yaml`: "
        + " <- ".join(f"`{s}`" for s in facts["lineage"]) + ".", "",
        "## Quality", "",
    ]  # fmt: skip
    if quality[0] == "perplexity":
        lines.append(f"Test perplexity {metrics['perplexity']:.3f} (the test split, on onnxruntime).")
    elif quality[1] is not None:
        lines.append(f"Test accuracy {100 * quality[1]:.2f}% on the deployed runtime ({m.get('runtime', '?')}).")
    check = facts.get("check")
    if check:
        lines.append(f"On the first {check['examples']} test examples, one at a time on onnxruntime: "
                     f"{check['correct']} correct (accuracy {check['accuracy']:.6f}).")  # fmt: skip
    lines += ["", "## Latency", ""]
    if lat:
        speed = (f", {facts['speedup_vs_teacher']:.2f}x the teacher's `{facts['teacher_artifact']}`"
                 if facts.get("speedup_vs_teacher") else "")  # fmt: skip
        lines.append(f"p50 {lat['p50_ms']:.3f} ms, p90 {lat.get('p90_ms', float('nan')):.3f} ms{speed}; measured on "
                     f"{m.get('runtime', '?')} {m.get('runtime_version', '')} with {m.get('threads', '?')} threads, "
                     f"CPU {cpu.get('model', '?')} (SIMD: {flags}).")  # fmt: skip
    lines += ["", "## Budgets", "", f"Verdict: {facts['budget_verdict']}."]
    for c in facts["budgets"]:
        got = "not measured" if c.get("measured") is None else f"{c['measured']:.3f}"
        lines.append(f"- {c['limit']}: {got} (allowed {c['allowed']}): {c.get('status', '?')}")
    lines += ["", "## Files", "", "`config.json` (labels, inputs), the tokenizer or `preprocessor_config.json`, "
              "`kv_cache.json` for causal LMs, `ship.json` (these facts, for scripts), `recipe.yaml`.", ""]  # fmt: skip
    return "\n".join(front + lines)
