"""Metrics as JSON lines plus a PNG of the curves, both in the run directory."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path


class MetricWriter:
    """Appends ``{"step", "split", <metric>: value}`` records to ``metrics.jsonl``."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / "metrics.jsonl"

    def write(self, step: int, split: str, metrics: dict) -> None:
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def plot(self) -> Path | None:
        """Draws one panel per metric name, one line per split, into ``metrics.png``."""
        records = self.read()
        if not records:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        curves = defaultdict(lambda: defaultdict(list))  # metric -> split -> [(step, v)]
        for r in records:
            for name, value in r.items():
                if name not in ("step", "split") and math.isfinite(value):
                    curves[name][r["split"]].append((r["step"], value))
        names = sorted(curves)
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            for split, points in sorted(curves[name].items()):
                steps, values = zip(*points)
                ax.plot(steps, values, marker="." if len(points) < 30 else None, label=split)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.legend(fontsize="small")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        out = self.path.with_name("metrics.png")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out
