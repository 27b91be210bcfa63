"""`python -m wasmkeep.keep`: the process keep, started by the host (`wasmkeep run`)."""

from wasmkeep.keep.process import main

main()
