"""Hard limits on everything that comes from outside, kept in one place.

Each bound protects something: the host's memory against a hostile config or
module, the keep against a hostile host's replies (sallyport), and both against
a workload that asks for more than any honest program needs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "RUNTIME_ALLOWANCE", "Limits"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Memory the keep runtime itself may use beyond the guest's linear memory:
#: Python, wasmtime, and compiled code (a few times the module's size). The
#: process keep limits itself to it; the VM keep's guest is given it.
RUNTIME_ALLOWANCE = 512 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    #: Largest module accepted, in bytes (larger real-world wasm apps are ~50 MiB).
    max_module_size: int = 256 * MiB
    #: Largest config file accepted, in bytes.
    max_config_size: int = 1 * MiB
    #: Largest CA certificate file (`client_ca`, `ca`) a config may name, in bytes;
    #: it is read into memory and sent to the keep (Mozilla's whole bundle is ~220 KiB).
    max_ca_bundle_size: int = 1 * MiB
    #: Total bytes of argv and of environ handed to the guest (each, with NULs).
    max_args_bytes: int = 1 * MiB
    #: Entries in `files` (each becomes a guest fd).
    max_config_files: int = 256
    #: Preopened directories.
    max_preopens: int = 64
    #: Open guest fds at once.
    max_open_fds: int = 1024
    #: Bytes moved by one read or write request; larger guest requests are short.
    max_io_chunk: int = 1 * MiB
    #: Length of a path passed to the host, in bytes (Linux PATH_MAX).
    max_path_bytes: int = 4096
    #: Directory entries returned by one readdir request.
    max_readdir_batch: int = 256
    #: Subscriptions in one poll_oneoff call.
    max_poll_subscriptions: int = 4096
    #: Bytes one random_get call may ask for.
    max_random_bytes: int = 64 * MiB
    #: Default ceiling on the guest's linear memory (wasm32 allows 4 GiB).
    default_max_memory: int = 2 * GiB


DEFAULT_LIMITS = Limits()
