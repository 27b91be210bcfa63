"""Sallyport: the one channel between a keep and its host.

Both sides import this package and nothing of each other: the keep (`keep/`)
asks through :class:`~wasmkeep.sallyport.calls.HostCalls`, the host (`host/`)
answers.
"""
