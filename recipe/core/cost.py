"""What a run's LLM calls cost: spend by role, the projection after the first units of work, the budget.

Shared by training (the replay buffer on the trainer's driver, per step), the data engine and evaluation
(the task runner, per task). Amounts are US dollars as the LLM-call layer counts them
(:class:`~collabllm_verl.recipe.core.llm_client.Usage` ``cost_usd``: the settings' own prices, else
litellm's price map); requests without a price count $0 and are reported as unpriced. No verl import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["BudgetExceeded", "check_budget", "projection_text", "role_of", "spend_by_role"]

ROLES = ("simulator", "judges", "other")
"""Roles a cost is split into: the user simulator, the judges, every other LLM call (assistants, policy)."""


def role_of(purpose: str) -> str:
    """The role of an LLM-call ``purpose`` label: ``"user_simulator"`` -> simulator, ``"judge:<metric>"`` ->
    judges, anything else -> other."""
    if purpose.startswith("user_simulator") or purpose == "simulator":
        return "simulator"
    if purpose.startswith("judge"):
        return "judges"
    return "other"


def spend_by_role(stats: Mapping[str, float]) -> dict[str, float]:
    """``{role: USD}`` (and ``"unpriced"``: requests without a price) from :func:`llm_stats`-style counters
    (``"<purpose>/cost_usd"`` and ``"<purpose>/cost_unknown"`` keys; the unprefixed totals are ignored)."""
    out = dict.fromkeys((*ROLES, "unpriced"), 0.0)
    for key, value in stats.items():
        purpose, sep, counter = key.rpartition("/")
        if not sep:
            continue
        if counter == "cost_usd":
            out[role_of(purpose)] += float(value)
        elif counter == "cost_unknown":
            out["unpriced"] += float(value)
    return out


class BudgetExceeded(RuntimeError):
    """A run spent more than its budget and was stopped.

    Attributes:
        budget_usd: the budget (USD).
        spent_usd: what the run had spent when it stopped (USD, every role).
        summary: the task runner's summary at the stop (set by ``TaskRunner``; None elsewhere).
    """

    def __init__(self, message: str, *, budget_usd: float, spent_usd: float, summary: Any = None) -> None:
        super().__init__(message)
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.summary = summary


def _usd(value: float) -> str:
    return f"${value:.4g}" if value else "$0"


def _count(number: int, unit: str) -> str:
    return f"{number} {unit}" if number == 1 else f"{number} {unit}s"


def _roles_text(spent: Mapping[str, float]) -> str:
    parts = [f"{role} {_usd(spent.get(role, 0.0))}" for role in ROLES if role != "other" or spent.get(role)]
    return ", ".join(parts)


def check_budget(
    spent: Mapping[str, float], budget_usd: float | None, *, what: str, key: str, then: str | None = None
) -> None:
    """Raise :class:`BudgetExceeded` when the spend of every role together exceeds ``budget_usd``.

    Args:
        spent: ``{role: USD}`` (:func:`spend_by_role`; an ``"unpriced"`` count is ignored).
        budget_usd: the budget in USD, or None for no budget.
        what: the run in the message (``"training run"``, ``"evaluation"``).
        key: the budget's setting as the user writes it (``max_cost_usd``, ``--max_cost_usd``).
        then: what happened and how to continue (checkpoint folder, re-run hint); None: the message ends
            after the budget with a full stop.

    Raises:
        BudgetExceeded: ``"<what> stopped: spent $X (simulator $a, judges $b), more than the budget <key>=B USD;
            <then>"`` (``then`` None: ``"... <key>=B USD."``).
    """
    if budget_usd is None:
        return
    total = sum(float(v) for k, v in spent.items() if k in ROLES)
    if total > budget_usd:
        raise BudgetExceeded(
            f"{what} stopped: spent {_usd(total)} ({_roles_text(spent)}), more than the budget "
            f"{key}={budget_usd:g} USD" + (f"; {then}" if then is not None else "."),
            budget_usd=budget_usd,
            spent_usd=total,
        )


def projection_text(
    spent: Mapping[str, float],
    *,
    done: int,
    total: int,
    unit: str,
    budget_usd: float | None = None,
    budget_key: str = "max_cost_usd",
) -> str:
    """The cost projection: spend per unit so far, times the units the run is configured for.

    Args:
        spent: ``{role: USD}`` after ``done`` units (an ``"unpriced"`` entry counts requests without a price).
        done: units finished (steps, tasks), >= 1.
        total: units of the whole run (>= ``done``).
        unit: ``"step"``, ``"task"``, ``"conversation"``.
        budget_usd: the run's budget, if any (the text says whether the projection exceeds it).

    Returns:
        e.g. ``"cost after 1 of 10 steps: $0.5 per step (simulator $0.4, judges $0.1); projected $5 for 10
        steps (simulator $4, judges $1); budget max_cost_usd=3 USD: projected to stop after about 6 steps"``.

    Raises:
        ValueError: ``done`` < 1 or ``total`` < ``done``.
    """
    if done < 1 or total < done:
        raise ValueError(f"projection needs 1 <= done <= total, got done={done}, total={total}")
    roles = {role: float(spent.get(role, 0.0)) for role in ROLES}
    per_unit = {role: value / done for role, value in roles.items()}
    projected = {role: value * total for role, value in per_unit.items()}
    per_total, all_total = sum(per_unit.values()), sum(projected.values())
    text = (
        f"cost after {done} of {total} {unit}s: {_usd(per_total)} per {unit} ({_roles_text(per_unit)}); "
        f"projected {_usd(all_total)} for {total} {unit}s ({_roles_text(projected)})"
    )
    if budget_usd is not None:
        if all_total > budget_usd and per_total > 0:
            text += (
                f"; budget {budget_key}={budget_usd:g} USD: projected to stop after about "
                f"{_count(max(done, math.floor(budget_usd / per_total)), unit)}"
            )
        else:
            text += f"; within the budget {budget_key}={budget_usd:g} USD"
    unpriced = float(spent.get("unpriced", 0.0))
    if unpriced:
        text += (
            f"; {int(unpriced)} requests had no price (counted $0): set input_cost_per_token and "
            "output_cost_per_token of the simulator and the judges"
        )
    return text
