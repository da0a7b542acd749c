"""Dataset handling: loading sources, converting rows to verl parquet, the assistant system prompt."""
