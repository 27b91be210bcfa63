"""`python -m wasmkeep`: the same as the `wasmkeep` command."""

from wasmkeep.cli.main import main

main()
