"""The accuracy / latency trade-off of every artifact of a run, one panel per device, as a PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from compress.fileio import default_mode


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (latency, accuracy, name) no other point beats on both: faster and at least as accurate."""
    best: list[tuple[float, float, str]] = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or p[1] > best[-1][1]:
            best.append(p)
    return best


def plot_pareto(report: dict[str, Any], path: Path, x_label: str | None = None) -> Path | None:
    """Write ``path`` (PNG); None when no artifact has both an accuracy and a latency. ``x_label``: the x axis's
    label where the latencies are not milliseconds on a device (default "p50 latency on <device> (ms)")."""
    panels = []
    for device in report.get("devices", []):
        pts = [(row["latency"][device]["p50_ms"], 100 * row["metrics"]["accuracy"], row["name"])
               for row in report["artifacts"]
               if device in row["latency"] and row["metrics"].get("accuracy") is not None]  # fmt: skip
        if pts:
            panels.append((device, pts))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (device, pts) in zip(axes[0], panels, strict=True):
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:gray", zorder=2)
        front = frontier(pts)
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:blue", zorder=3, label="Pareto front")
        on_front = {p[2] for p in front}
        log_x = max(p[0] for p in pts) > 5 * min(p[0] for p in pts)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0), numticks=6))
        else:
            ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.margins(x=0.12, y=0.25)  # room for the staggered labels above the highest points
        xs = sorted(p[0] for p in pts)
        middle = xs[len(xs) // 2] if len(xs) > 1 else xs[0] * 2
        for i, (x, y, name) in enumerate(sorted(pts)):
            # labels point inwards (left half: text to the right, right half: to the left) and are staggered
            # vertically, so that they stay inside the axes and near points stay readable
            right = x >= middle and len(xs) > 1
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(-6 if right else 6, 6 + 9 * (i % 3)),
                        ha="right" if right else "left", fontsize=7, annotation_clip=True,
                        color="black" if name in on_front else "dimgray")  # fmt: skip
        ax.set_xlabel(x_label or f"p50 latency on {device} (ms)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(device)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{report['recipe'].get('name', 'recipe')}: accuracy against latency")
    fig.tight_layout()
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.png")
    os.close(fd)
    default_mode(name)
    tmp = Path(name)
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)  # never a half-written plot
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
