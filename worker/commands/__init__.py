"""Subcommands: each a thin function from settings to an exit code."""
