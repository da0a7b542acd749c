"""The core that imports no verl: forward sampling, MR scoring, the LLM-call layer, the policy protocol.

Training (through the verl adapters), evaluation and the data engine all run this code; ``tests/test_layout.py``
checks that none of its modules imports verl.
"""
