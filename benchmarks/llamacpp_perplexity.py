"""Perplexity of a GGUF file on llama.cpp over given token blocks: the llama.cpp row of `lm_smollm2.py`.

Runs in an environment with llama-cpp-python (it compiles llama.cpp from source, so it lives apart from
compress's own), with numpy and the standard library only:

    python benchmarks/llamacpp_perplexity.py --gguf MODEL.gguf --blocks blocks.json --threads 2 --out ppl.json

``blocks.json`` holds a list of token-id lists (the test blocks the pipeline evaluates every ONNX graph on, written
by `lm_smollm2.py --llamacpp`); each block is evaluated from an empty context, and every position but the last
predicts the next token, as the pipeline counts it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", required=True)
    p.add_argument("--blocks", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from llama_cpp import Llama

    blocks = json.loads(Path(args.blocks).read_text())
    longest = max(len(b) for b in blocks)
    llm = Llama(model_path=args.gguf, n_ctx=longest + 8, n_batch=longest + 8, n_threads=args.threads,
                n_threads_batch=args.threads, logits_all=True, verbose=False)  # fmt: skip
    nll, correct, count = 0.0, 0, 0
    started = time.perf_counter()
    for block in blocks:
        llm.reset()
        llm.eval(block)
        logits = np.asarray(llm.scores[: len(block) - 1], dtype=np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        target = np.asarray(block[1:])
        nll -= float(logp[np.arange(len(target)), target].sum())
        correct += int((logits.argmax(-1) == target).sum())
        count += len(target)
    out = {"perplexity": math.exp(min(nll / max(count, 1), 50.0)), "nll": nll / max(count, 1),
           "next_token_accuracy": correct / max(count, 1), "tokens": count, "blocks": len(blocks),
           "seconds": time.perf_counter() - started}  # fmt: skip
    Path(args.out).write_text(json.dumps(out))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
