"""What a run leaves behind: metrics.jsonl (one JSON record per line) and curves.png.

A record is `{"step": 120, "epoch": 2.0, "split": "train", "loss": 0.31, "lr": 0.002, ...}`;
"split" is "train" for the running training loss (every `log_every` steps) and "val" for each
validation. Appending one line per record keeps the file readable while the run is going and
cheap to write; a resumed run first drops the records the killed run wrote after its checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "plot_curves", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file ([] when there is none); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return records


class MetricsLog:
    """Appends records to `<run>/metrics.jsonl` (no file when `path` is None, e.g. on ranks > 0)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)

    def truncate_after(self, step: int) -> None:
        """Drops the records of steps after `step`: what a killed run logged past its checkpoint."""
        if self.path is None or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as file:
            file.write(json.dumps(clean) + "\n")


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Saves one panel per metric (loss, accuracy, ...) against the step, train and validation together.

    Raises:
        ImportError: matplotlib is not installed; the message names the extra that brings it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting curves needs matplotlib: pip install 'replearn[plots]' (or matplotlib)") from None
    skip = {"step", "epoch", "split", "lr", "samples_per_s", "seconds"}
    names = sorted({k.removeprefix("val_") for r in records for k in r if k not in skip})
    names.sort(key=lambda name: name != "loss")  # loss first
    figure, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.5), squeeze=False)
    for axis, name in zip(axes[0], names):
        for split, key in (("train", name), ("val", f"val_{name}")):
            points = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, label=split, marker="o" if split == "val" else None, markersize=3)
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
