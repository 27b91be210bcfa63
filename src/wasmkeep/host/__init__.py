"""The untrusted side: starts keeps and performs their requests under the
workload's capabilities. Never imports `wasmkeep.keep`."""
