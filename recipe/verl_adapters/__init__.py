"""Thin adapters between verl 0.9.1 and the core: agent loop, reward manager, plug-ins, replay buffer, step
ledger, step summary and conversation dump. ``plugins`` is the module named in ``VERL_USE_EXTERNAL_MODULES``.
"""
