"""Where the package keeps files it derives (caches), outside read-only dataset folders, and
the one check of the output locations every tool writes to.

Standard library only: tools/export_model.py copies this package next to the exported
runner, which has neither torch nor panoptic_ext.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OutputPathError", "OutsideFolderError", "check_output_file", "join_inside",
           "prepare_output_dir", "refuse_replacing_inputs", "user_cache_dir"]


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/panoptic_ext/<parts>`` (default ``~/.cache/...``), not created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "panoptic_ext", *parts)


class OutputPathError(OSError):
    """An output location that cannot be written, or whose writing would replace an input."""


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def prepare_output_dir(folder: str | os.PathLike, option: str = "--output") -> str:
    """Create ``folder`` (and its parents) before any work, so a file in its place or a
    location that cannot be created fails at once, naming ``option`` and the path."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputPathError(f"{option}: {folder} is a file, not a folder; give a folder "
                              "(it is created if missing)")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"{option}: cannot create the folder {folder} ({_reason(e)}); "
                              "give a folder you can write") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option}: the folder {folder} is not writable; give a "
                              "folder you can write")
    return folder


def check_output_file(path: str | os.PathLike, option: str = "--output") -> str:
    """Check that the file ``path`` can be written (its folder is created) before the work
    that produces it; a folder in its place is an error naming ``option``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{option}: {path} is a folder; give a file name")
    prepare_output_dir(os.path.dirname(os.path.abspath(path)), option)
    return path


def refuse_replacing_inputs(outputs: Iterable[str | os.PathLike],
                            inputs: Iterable[str | os.PathLike], option: str = "--output"
                            ) -> None:
    """An output that is one of the inputs (links resolved) is refused before anything is
    written: the user's file would be replaced by a result."""
    real = {os.path.realpath(p): os.fspath(p) for p in inputs}
    for out in outputs:
        source = real.get(os.path.realpath(out))
        if source is not None:
            raise OutputPathError(
                f"{option}: writing {os.fspath(out)} would replace the input {source}; give "
                f"another {option} (outputs never replace inputs)")


class OutsideFolderError(ValueError):
    """A file named in a JSON that leads out of the folder it must be in."""


def join_inside(folder: str, name: str, source: str, allow_outside: bool = False) -> str:
    """``folder/name``, refusing a ``name`` that leads out of ``folder`` (absolute, or ``..``)
    unless ``allow_outside``: a JSON (``source``) must not make a tool read any file on the
    machine. Lexical, so links inside the folder keep working."""
    path = os.path.join(folder, name)
    if not allow_outside and (os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0]
                              == os.pardir):
        raise OutsideFolderError(
            f"{source}: file_name {name!r} leads outside its folder {folder}; give a name "
            "inside the folder (or allow outside paths explicitly, --allow-outside-paths in "
            "the evaluation CLI)")
    return path
