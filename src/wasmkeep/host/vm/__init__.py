"""The VM keep's host side: the keep image (`image`: a kernel and an initramfs
holding Python, wasmtime and wasmkeep, built reproducibly from this machine's
files) and the qemu launcher (`launch`)."""
