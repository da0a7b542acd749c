"""Plot the per-step reward breakdown of a CollabLLM GRPO run from the conversation dump's summary.jsonl.

    python benchmarks/plot_training_steps.py RUN/checkpoints/conversations/summary.jsonl --out steps.png

One panel for the mean reward (multiturn-aware reward of the trained responses) with the share of skipped
responses, and one per metric with its mean raw value per step. A metric with no scored conversation in a
step (``null`` or ``"n/a"``) is left out of that step's point.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _number(value) -> float:
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", type=Path, help="summary.jsonl of the conversation dump")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    records = {}
    for line in args.summary.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[int(record["step"])] = record  # a resumed step keeps its last record
    steps = sorted(records)
    metrics = sorted({name for r in records.values() for name in r.get("metrics", {})})
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(3.2 * (1 + len(metrics)), 3.0), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [_number(records[s]["reward"]) for s in steps], marker="o", label="reward (mean)")
    ax.plot(
        steps,
        [records[s].get("skipped", 0) / max(1, records[s].get("responses", 1)) for s in steps],
        marker="x",
        label="skipped share",
    )
    ax.set_title("multiturn-aware reward")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    for ax, name in zip(axes[0][1:], metrics, strict=True):
        ax.plot(steps, [_number(records[s]["metrics"].get(name)) for s in steps], marker="o")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(steps)} steps, metrics: {', '.join(metrics)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
