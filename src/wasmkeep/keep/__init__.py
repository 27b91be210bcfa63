"""The trusted side: the keep runtime, its engine and its WASI implementation.
Never imports `wasmkeep.host`; everything outside the keep is asked for
through sallyport."""
