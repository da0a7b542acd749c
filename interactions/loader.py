"""Build interactions from a YAML list of ``{name, class_name, config}`` entries.

Format (the same shape verl's ``interaction_config_path`` files had)::

    interaction:
      - name: collabllm
        class_name: collabllm_verl.interactions.collabllm_interaction.CollabLLMInteraction
        config: {model: gpt-4o-mini, temperature: 1.0, ...}

The file is read with OmegaConf, so ``${oc.env:VAR,default}`` interpolations are resolved at load time.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from collabllm_verl.interactions.base import BaseInteraction
from collabllm_verl.recipe.core.llm_client import redact_secrets

__all__ = ["interaction_entries", "load_interactions"]

logger = logging.getLogger(__name__)


def interaction_entries(source: str | os.PathLike | Sequence | Mapping) -> tuple[list[dict], str]:
    """Read entries from a YAML path, a mapping with key ``interaction``, or a list of entries.

    Returns ``(entries, origin)`` with interpolations resolved; ``origin`` names the source in errors.
    """
    origin = "<interaction list>"
    if isinstance(source, (str, os.PathLike)):
        origin = os.fspath(source)
        if not os.path.isfile(origin):
            raise FileNotFoundError(f"interaction config file not found: {origin}")
        source = OmegaConf.load(origin)
    if isinstance(source, (DictConfig, ListConfig)):
        source = OmegaConf.to_container(source, resolve=True)
    if isinstance(source, Mapping):
        if "interaction" not in source:
            raise ValueError(f"{origin}: expected a top-level key 'interaction' holding a list of entries")
        source = source["interaction"]
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)):
        raise ValueError(f"{origin}: 'interaction' must be a list of {{name, class_name, config}} entries")
    entries = []
    for i, entry in enumerate(source):
        if isinstance(entry, (DictConfig, ListConfig)):
            entry = OmegaConf.to_container(entry, resolve=True)
        if not isinstance(entry, Mapping):
            raise ValueError(f"{origin}: interaction entry {i} must be a mapping, got {type(entry).__name__}")
        entries.append(dict(entry))
    return entries, origin


def _default_name(class_name: str) -> str:
    short = class_name.rsplit(".", 1)[-1]
    short = re.sub(r"Interaction$", "", short) or short
    return short.lower()


def _import_class(path: str, where: str) -> type:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{where}: class_name {path!r} must be a full dotted path (package.module.Class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"{where}: cannot import module {module_name!r} of class_name {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ImportError(f"{where}: module {module_name!r} has no class {attr!r}") from None


def load_interactions(
    source: str | os.PathLike | Sequence | Mapping, *, config_overrides: Mapping | None = None
) -> dict[str, BaseInteraction]:
    """Instantiate every interaction listed in ``source`` (a YAML path, a mapping or a list of entries).

    Each entry needs ``class_name`` (dotted path of a :class:`BaseInteraction` subclass); ``name`` defaults
    to the class name without the ``Interaction`` suffix, lower-cased; ``config`` (mapping, optional) is
    passed to the constructor with ``config_overrides`` merged over it (the run's settings, e.g. the trainer
    config's ``actor_rollout_ref.rollout.custom.user_simulator``) and ``name`` added.

    Returns:
        ``{name: interaction}`` in file order.

    Raises:
        FileNotFoundError, ValueError, ImportError, TypeError: with the file, entry index and field named.
    """
    entries, origin = interaction_entries(source)
    out: dict[str, BaseInteraction] = {}
    for i, entry in enumerate(entries):
        where = f"{origin}: interaction entry {i}"
        unknown = set(entry) - {"name", "class_name", "config"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; expected name, class_name, config")
        class_name = entry.get("class_name")
        if not isinstance(class_name, str) or not class_name:
            raise ValueError(f"{where}: missing field 'class_name'")
        cls = _import_class(class_name, where)
        if not (isinstance(cls, type) and issubclass(cls, BaseInteraction)):
            raise TypeError(f"{where}: {class_name} is not a subclass of BaseInteraction")
        name = entry.get("name") or _default_name(class_name)
        if name in out:
            raise ValueError(f"{where}: duplicate interaction name {name!r}")
        config = entry.get("config") or {}
        if not isinstance(config, Mapping):
            raise ValueError(f"{where}: field 'config' must be a mapping, got {type(config).__name__}")
        config = {**config, **(config_overrides or {}), "name": name}
        try:
            out[name] = cls(config)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where} ({name}): {exc}") from exc
        logger.info("interaction %r: %s %s", name, class_name, redact_secrets(config))
    return out
