"""Small file-system helpers every part of the package shares (atomic writes, caches, locks)."""

from .io import atomic_write, atomic_write_json, atomic_writer, read_json_or_none
from .locks import file_lock
from .paths import user_cache_dir

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "atomic_writer",
    "file_lock",
    "read_json_or_none",
    "user_cache_dir",
]
