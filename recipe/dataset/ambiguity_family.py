"""The ambiguity-controlled task family: short requests that a small model can do once it knows one detail.

Each task asks for a short text that must use one detail (a name, a place, a day, a topic, a number). A
*clear* row's opener is the complete request; an *ambiguous* row's opener is the same request with the
detail left out, so no answer can be right without asking (or a lucky guess). Rows (JSON Lines, one
object per line)::

    {"id", "task_desc", "single_turn_prompt", "opener", "ambiguous", "clarification", "must_contain"}

* ``single_turn_prompt``: the complete request (the user simulator's hidden goal);
* ``opener``: the first user message (= ``single_turn_prompt`` on clear rows);
* ``clarification``: what the user says when asked for the missing detail (None on clear rows);
* ``must_contain``: strings every correct final answer contains (case-insensitive).

Held-in (``heldin``) and held-out (``heldout``) rows come from different templates (:data:`TEMPLATES`),
so a held-out score measures a behaviour, not a memorised request. Generation is seeded and
deterministic: the same seed and sizes give byte-identical files.

CLI::

    python -m collabllm_verl.recipe.dataset.ambiguity_family --out_dir data/ambiguity --rows_per_template 6

No verl import.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rows import DatasetFormatError

__all__ = [
    "FIELDS",
    "SPLITS",
    "TASK_DESC",
    "TEMPLATES",
    "Template",
    "generate_rows",
    "main",
    "validate_row",
    "write_family",
]

FIELDS = ("id", "task_desc", "single_turn_prompt", "opener", "ambiguous", "clarification", "must_contain")
SPLITS = ("heldin", "heldout")
TASK_DESC = (
    "The user needs a short piece of text (a note, a message, a title, a sentence) that uses one specific "
    "detail they have in mind, such as a name, a place, a day, a topic or a number."
)

# Values of each kind of detail. A value appears in an answer only when the model knows it (or guesses it).
VALUES: dict[str, tuple[str, ...]] = {
    "name": ("Priya", "Tomasz", "Keiko", "Amara", "Lucas", "Ingrid", "Rafael", "Zanele", "Mateo", "Freya"),
    "place": (
        "Lisbon",
        "Kyoto",
        "Nairobi",
        "Oslo",
        "Cusco",
        "Marrakesh",
        "Vancouver",
        "Hanoi",
        "Dublin",
        "Seville",
    ),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "topic": (
        "beekeeping",
        "volcanoes",
        "origami",
        "sourdough",
        "chess",
        "tides",
        "lanterns",
        "glaciers",
        "kites",
        "mushrooms",
    ),
    "number": ("12", "15", "18", "24", "30", "36", "45", "60", "75", "90"),
}


@dataclass(frozen=True)
class Template:
    """One request pattern with a ``{v}`` slot for its detail.

    Attributes:
        key: short identifier, part of row ids.
        kind: the detail's kind, a key of :data:`VALUES`.
        full: the complete request.
        vague: the request without the detail (the ambiguous opener); has no ``{v}``.
        clarification: what the user says when asked, with ``{v}``.
    """

    key: str
    kind: str
    full: str
    vague: str
    clarification: str


TEMPLATES: dict[str, tuple[Template, ...]] = {
    "heldin": (
        Template(
            "thanks",
            "name",
            "Write a short thank-you note to my colleague {v}.",
            "Write a short thank-you note to my colleague.",
            "My colleague's name is {v}.",
        ),
        Template(
            "trip",
            "place",
            "Suggest one thing to do on my weekend trip to {v}.",
            "Suggest one thing to do on my weekend trip.",
            "I am going to {v}.",
        ),
        Template(
            "meeting",
            "day",
            "Write a one-line reminder that the team meeting is on {v}.",
            "Write a one-line reminder about the team meeting.",
            "The meeting is on {v}.",
        ),
        Template(
            "blog",
            "topic",
            "Give me a title for my blog post about {v}.",
            "Give me a title for my blog post.",
            "The post is about {v}.",
        ),
        Template(
            "store",
            "number",
            "Write one sentence announcing that our store opens at {v} minutes past nine.",
            "Write one sentence announcing when our store opens.",
            "It opens at {v} minutes past nine.",
        ),
        Template(
            "birthday",
            "name",
            "Write a one-sentence birthday wish for my sister {v}.",
            "Write a one-sentence birthday wish for my sister.",
            "Her name is {v}.",
        ),
    ),
    "heldout": (
        Template(
            "welcome",
            "name",
            "Write a short welcome message for our new teammate {v}.",
            "Write a short welcome message for our new teammate.",
            "The new teammate is called {v}.",
        ),
        Template(
            "food",
            "place",
            "Name one food I should try when I visit {v}.",
            "Name one food I should try on my next holiday.",
            "I will be visiting {v}.",
        ),
        Template(
            "meetup",
            "day",
            "Write a text telling my friend that I can meet on {v}.",
            "Write a text telling my friend when I can meet.",
            "I can meet on {v}.",
        ),
        Template(
            "fact",
            "topic",
            "Tell me one fun fact about {v} in a single sentence.",
            "Tell me one fun fact in a single sentence.",
            "I would like a fact about {v}.",
        ),
        Template(
            "parcel",
            "number",
            "Write a sentence saying that the parcel weighs {v} kilograms.",
            "Write a sentence saying how much the parcel weighs.",
            "It weighs {v} kilograms.",
        ),
        Template(
            "poem",
            "topic",
            "Write a two-line poem about {v}.",
            "Write a two-line poem for me.",
            "Make it about {v}.",
        ),
    ),
}


def generate_rows(split: str, *, rows_per_template: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """The rows of one split: ``rows_per_template`` per template, half of them ambiguous (rounded down).

    Each template draws distinct values (seeded), so no two rows of a template share a hidden goal; rows
    alternate between clear and ambiguous within a template and across templates, and the output
    interleaves the templates (row 0 of each, then row 1, ...), so any first N rows mix both.

    Args:
        split: ``"heldin"`` or ``"heldout"``.
        rows_per_template: rows per template (1 to the number of values of its kind).
        seed: the random seed; the split name is mixed in, so the two splits draw independently.

    Returns:
        Rows with the fields of :data:`FIELDS`.

    Raises:
        ValueError: an unknown split, or more rows than a template has values.
    """
    if split not in TEMPLATES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"{seed}:{split}")
    per_template = []
    for position, template in enumerate(TEMPLATES[split]):
        pool = VALUES[template.kind]
        if not 1 <= rows_per_template <= len(pool):
            raise ValueError(
                f"rows_per_template={rows_per_template}: template {template.key!r} has {len(pool)} values"
            )
        values = rng.sample(pool, rows_per_template)
        rows = []
        for index, value in enumerate(values):
            ambiguous = (index + position) % 2 == 1
            full = template.full.format(v=value)
            rows.append(
                {
                    "id": f"{split}-{template.key}-{index:02d}",
                    "task_desc": TASK_DESC,
                    "single_turn_prompt": full,
                    "opener": template.vague if ambiguous else full,
                    "ambiguous": ambiguous,
                    "clarification": template.clarification.format(v=value) if ambiguous else None,
                    "must_contain": [value],
                }
            )
        per_template.append(rows)
    # interleaved (row 0 of every template, then row 1, ...), so that any first N rows mix templates and kinds
    rows = [row for group in zip(*per_template, strict=True) for row in group]
    return rows


def validate_row(row: Mapping[str, Any], *, source: str = "<rows>", index: int = 0) -> None:
    """Check one row against the family's schema.

    Raises:
        DatasetFormatError: (a ValueError) a field is missing or of the wrong type, a clear row whose opener
            differs from its request or that has a clarification, an ambiguous row without a clarification,
            or an empty ``must_contain``; the message names ``source``, the row index and the field.
    """

    def fail(field: str, problem: str) -> None:
        raise DatasetFormatError(source, index, field, problem)

    for field in FIELDS:
        if field not in row:
            fail(field, "missing")
    for field in ("id", "task_desc", "single_turn_prompt", "opener"):
        if not isinstance(row[field], str) or not row[field].strip():
            fail(field, "expected a non-empty string")
    if not isinstance(row["ambiguous"], bool):
        fail("ambiguous", f"expected true or false, got {row['ambiguous']!r}")
    must = row["must_contain"]
    if not isinstance(must, Sequence) or isinstance(must, str) or not must:
        fail("must_contain", "expected a non-empty list of strings")
    if not all(isinstance(s, str) and s.strip() for s in must):
        fail("must_contain", "expected a non-empty list of non-empty strings")
    if row["ambiguous"]:
        if not isinstance(row["clarification"], str) or not row["clarification"].strip():
            fail("clarification", "an ambiguous row needs the clarification the user gives when asked")
    else:
        if row["clarification"] is not None:
            fail("clarification", "must be null on a clear row")
        if row["opener"] != row["single_turn_prompt"]:
            fail("opener", "a clear row's opener is its single_turn_prompt")


def _dump(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_family(out_dir: Path, *, rows_per_template: int = 6, seed: int = 0) -> dict[str, Path]:
    """Write ``<out_dir>/ambiguity_<split>.jsonl`` for both splits (each file atomically).

    Returns:
        split -> written path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLITS:
        rows = generate_rows(split, rows_per_template=rows_per_template, seed=seed)
        for index, row in enumerate(rows):
            validate_row(row, source=split, index=index)
        path = out_dir / f"ambiguity_{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text(_dump(rows), encoding="utf-8")
        tmp.replace(path)
        written[split] = path
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI: write both splits; prints the paths and row counts."""
    p = argparse.ArgumentParser(
        description="Write the ambiguity-controlled task family (held-in and held-out)."
    )
    p.add_argument("--out_dir", default="data/ambiguity", help="output folder (default data/ambiguity)")
    p.add_argument("--rows_per_template", type=int, default=6, help="rows per template (default 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    try:
        written = write_family(Path(args.out_dir), rows_per_template=args.rows_per_template, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, path in written.items():
        rows = path.read_text(encoding="utf-8").count("\n")
        print(f"{split}: {rows} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
