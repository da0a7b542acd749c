"""Plot the per-step reward breakdown of one or more CollabLLM GRPO runs from their conversation dumps.

    python benchmarks/plot_training_steps.py RUN/checkpoints/conversations/summary.jsonl --out steps.png
    python benchmarks/plot_training_steps.py w0=RUN_A/.../summary.jsonl w2=RUN_B/.../summary.jsonl --out steps.png

Each argument is a ``summary.jsonl`` of the conversation dump, optionally prefixed with ``LABEL=``; every run
is one line per panel. Panels: the mean reward of the trained responses, the share of skipped responses,
one per metric (its mean raw value per step), and, where the step summaries carry them, the reward-quality
diagnostics ``ask_rate_ambiguous``, ``ask_rate_clear`` (share of first replies that ask, split by the rows'
``ambiguous`` field) and ``equal_reward_groups`` (share of GRPO groups without a learning signal). A value
with nothing scored in a step (``null`` or ``"n/a"``) is left out of that step's point.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DIAGNOSTICS = ("ask_rate_ambiguous", "ask_rate_clear", "equal_reward_groups")


def _number(value) -> float:
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def read_steps(path: Path) -> dict[int, dict]:
    """``{step: record}`` of a ``summary.jsonl``; a step written twice (a resumed run) keeps its last record."""
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[int(record["step"])] = record
    return records


def _series(record: dict) -> dict[str, float]:
    """The plotted values of one step record, by panel title."""
    values = {
        "reward (mean)": _number(record["reward"]),
        "skipped share": record.get("skipped", 0) / max(1, record.get("responses", 1)),
    }
    values.update({name: _number(m) for name, m in record.get("metrics", {}).items()})
    diagnostics = record.get("diagnostics") or {}
    values.update(
        {f"diag: {name}": _number(diagnostics.get(name)) for name in DIAGNOSTICS if name in diagnostics}
    )
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", help="[LABEL=]summary.jsonl of a conversation dump")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.summaries:
        label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        runs[label or Path(path).parent.parent.parent.name or path] = read_steps(Path(path))
    series = {label: {s: _series(r) for s, r in records.items()} for label, records in runs.items()}
    panels = list(dict.fromkeys(p for steps in series.values() for values in steps.values() for p in values))
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):  # the grid may have spare axes
        for label, steps in series.items():
            xs = sorted(steps)
            ax.plot(xs, [steps[s].get(panel, math.nan) for s in xs], marker="o", markersize=3, label=label)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(
        f"wrote {args.out} ({', '.join(f'{k}: {len(v)} steps' for k, v in runs.items())}; panels: {len(panels)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
