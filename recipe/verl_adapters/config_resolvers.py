"""OmegaConf resolvers that the recipe configs (``config/collabllm_*.yaml``) use; registered on import.

* ``${collabllm.config_file:agent.yaml}``: the absolute path of a file shipped in ``collabllm_verl.config``
  (verl reads ``agent_loop_config_path`` as a file path, in every process and on every node).
* ``${collabllm.basename:${actor_rollout_ref.model.path}}``: the last part of a path or hub id
  (``Qwen/Qwen2.5-7B-Instruct`` -> ``Qwen2.5-7B-Instruct``), for default experiment names.

Imported by the recipe's entry points (driver) and by ``plugins`` (every verl process, where verl resolves
the config). No verl import.
"""

from __future__ import annotations

import os
from importlib import resources

from omegaconf import OmegaConf

__all__ = ["CONFIG_DIR", "basename", "config_file"]

CONFIG_DIR = str(resources.files("collabllm_verl.config"))
"""Folder of the recipe's YAML files (``config/`` in a checkout, package data when installed)."""


def config_file(name: str) -> str:
    """Absolute path of ``name`` in :data:`CONFIG_DIR`.

    Raises:
        FileNotFoundError: no such file.
    """
    path = os.path.join(CONFIG_DIR, str(name))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"collabllm.config_file: {name!r} is not a file of {CONFIG_DIR}")
    return path


def basename(path: str) -> str:
    """``"a/b/c/"`` -> ``"c"``; a hub id ``"org/name"`` -> ``"name"``."""
    return os.path.basename(str(path).rstrip("/"))


for _name, _fn in (("collabllm.config_file", config_file), ("collabllm.basename", basename)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
