"""Image data: scikit-learn's digits (built in) and an image-folder layout `<split>/<class>/<file>`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.data.config import DataConfig
from compress.errors import DataError, RuntimeMissingError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images [1797, 8, 8] (0..16) and labels. Read from the CSV that scikit-learn ships, as
    its `load_digits` does, without importing scikit-learn: `sklearn.datasets` takes about 3 s to import (scipy),
    more than the rest of a digits run's data loading; `load_digits` itself where the file is not found."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    found = [Path(p) / "datasets" / "data" / "digits.csv.gz" for p in (spec.submodule_search_locations or [])] \
        if spec is not None else []  # fmt: skip
    if found and found[0].is_file():
        with gzip.open(found[0], "rt") as fh:
            data = np.loadtxt(fh, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    images, target = _digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - 0.5) / 0.5, torch.tensor(target, dtype=torch.long)


def load_image_folder(
    root: Path, cfg: DataConfig, classes: list[str] | None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeMissingError("image_folder data needs Pillow: pip install 'edge-compress[images]'.") from None
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist. Fix the path (relative to the recipe file).")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = classes or found
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders; expected {root}/<class>/<image>.")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as opened:
                    img = opened.convert("L" if cfg.grayscale else "RGB")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise DataError(
                    f"image {f} cannot be decoded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                    "Remove or replace the file."
                ) from None
            if cfg.image_size:
                img = img.resize((cfg.image_size, cfg.image_size))
            arr = np.asarray(img, dtype=np.float32) / 255.0
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            images.append(arr)
            labels.append(label)
    if not images:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(f"images in {root} have different sizes {sorted(shapes)[:3]}; set data.image_size.")
    x = (torch.tensor(np.stack(images)) - 0.5) / 0.5
    return x, torch.tensor(labels, dtype=torch.long), classes
