"""The `wasmkeep` command line."""
