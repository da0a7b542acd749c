"""What the recipe's entry points (``main_ppo``, ``main_sft``) do around verl's own Hydra mains.

verl's mains are ``@hydra.main`` functions bound to verl's config folder; :func:`run_hydra_main` runs the
same function body (``__wrapped__``) under a Hydra main bound to the recipe's config folder, with verl's
config folder (``pkg://verl.trainer.config``) on Hydra's search path, so that the recipe configs
(``defaults: [ppo_trainer, _self_]``) compose with verl's and every Hydra flag works as with verl. (The
search path is given on the command line rather than in the YAML files: Hydra reads ``hydra.searchpath``
from the primary config only, and the CPU presets include the GPU configs.) Before the trainer starts it
translates the seed command lines (:mod:`.overrides`) and checks that the
local data files exist, and prints the translated command line (``+ ...``, never an API key).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from collabllm_verl.recipe.verl_adapters.config_resolvers import CONFIG_DIR
from collabllm_verl.recipe.verl_adapters.overrides import translate_overrides

__all__ = ["VERL_CONFIG_SEARCH_PATH", "check_data_files", "run_hydra_main", "split_hydra_flags"]

VERL_CONFIG_SEARCH_PATH = "pkg://verl.trainer.config"
"""Where Hydra finds verl's configs (``ppo_trainer``, ``sft_trainer_engine`` and their groups)."""


def check_data_files(config: Any, kind: str) -> None:
    """Stop with a readable message when a local ``data.train_files``/``data.val_files`` file is missing.

    Args:
        config: the composed trainer config (``data.train_files`` and ``data.val_files``: a path, a list of
            paths or null; ``hdfs://`` paths are left to verl).
        kind: ``"rl"`` or ``"sft"``, named in the hint (``process_dataset.py --dataset_type <kind>``).

    Raises:
        SystemExit: exit status 1 with ``missing data file: <path> (...)``.
    """
    for key in ("train_files", "val_files"):
        paths = config.data.get(key)
        if paths is None:
            continue
        for path in [paths] if isinstance(paths, str) else list(paths):
            path = os.path.expanduser(str(path))
            if not path.startswith("hdfs://") and not os.path.isfile(path):
                raise SystemExit(
                    f"missing data file: {path} (data.{key}; create it with: "
                    f"python process_dataset.py --dataset_type {kind} --local_dir ...)"
                )


def split_hydra_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split command-line arguments into Hydra's flags (``--cfg job``, ``--config-name X``, ``-cn X``, with
    their values) and overrides, keeping the order within each: Hydra's parser takes the overrides as one
    run of positional arguments, so they must not be interrupted by a flag.

    A flag's value is the next argument when that holds no ``=`` and does not start with ``-`` or ``~``
    (overrides always hold ``=`` or start with ``~``).
    """
    flags: list[str] = []
    overrides: list[str] = []
    taking_value = False
    for arg in args:
        if arg.startswith("-"):
            flags.append(arg)
            taking_value = "=" not in arg
        elif taking_value and "=" not in arg and not arg.startswith("~"):
            flags.append(arg)
            taking_value = False
        else:
            overrides.append(arg)
            taking_value = False
    return flags, overrides


def run_hydra_main(verl_main: Callable, *, default_config: str, data_kind: str, argv: Sequence[str]) -> Any:
    """Run ``verl_main`` (a ``@hydra.main`` function of verl) on the recipe config ``default_config``.

    Args:
        verl_main: ``verl.trainer.main_ppo.main`` or ``verl.trainer.sft_trainer.main``.
        default_config: config name in the recipe's config folder (``--config-name`` on the command line wins).
        data_kind: ``"rl"`` or ``"sft"`` (see :func:`check_data_files`).
        argv: the process's arguments, program name first; replaced in ``sys.argv`` by the translated ones.
    """
    import hydra

    translation = translate_overrides(argv[1:])
    translation.apply_env(os.environ)
    for note in translation.notes:
        print(f"+ {note}", file=sys.stderr)
    flags, overrides = split_hydra_flags(translation.overrides)
    sys.argv = [argv[0], *flags, f"hydra.searchpath=[{VERL_CONFIG_SEARCH_PATH}]", *overrides]
    if os.environ.get("RANK", "0") == "0":  # torchrun starts one process per rank; one line is enough
        print("+", shlex.join([f"{__package__}.{os.path.splitext(os.path.basename(argv[0]))[0]}", *sys.argv[1:]]))
        sys.stdout.flush()
    body = verl_main.__wrapped__

    def task(config):
        check_data_files(config, data_kind)
        return body(config)

    return hydra.main(config_path=CONFIG_DIR, config_name=default_config, version_base=None)(task)()
