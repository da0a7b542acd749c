"""Support shared by the command-line tools (model flags, the local stand-in server for a run)."""
