"""The one rule for what a command writes, shared by every command that writes files.

1. An output is never one of the command's inputs, never contains one and never lies inside one
   (:func:`check_disjoint`): ``--out RUN/checkpoints`` for a merge of RUN, ``--output D`` for a
   tokenize of ``D/train``, ``--out R`` for an export of run R are refused by name.
2. An existing output is replaced only with ``--overwrite``, and only when it looks like this
   command's own earlier output (it holds the files the command always writes: its manifest or
   marker). Anything else is refused by name, even with ``--overwrite`` (:func:`check_replaceable`).
3. The replacement is atomic (:func:`staged_dir`): the new output is written beside the old one,
   and the old one is removed only once the new one is complete and in place. A refused command
   writes nothing: every check runs before the first byte is written.

This module is a leaf: it imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

Owner = Sequence[str] | Callable[[Path], bool]


class OutputError(ValueError):
    """An output that would destroy or swallow data: the message names the flag and the path."""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def check_disjoint(output: str | Path, inputs: Mapping[str, str | Path] | Iterable[tuple[str, str | Path]],
                   flag: str = "--out") -> None:
    """Refuse ``output`` when it is, contains or lies inside any of ``inputs`` (``{what: path}``).

    Paths are compared after resolving links, so a link to an input is that input.
    """
    out = _real(Path(output))
    items = inputs.items() if isinstance(inputs, Mapping) else inputs
    for what, path in items:
        if path is None:
            continue
        src = _real(Path(path))
        if out == src:
            relation = "is"
        elif src.is_relative_to(out):
            relation = "contains"
        elif out.is_relative_to(src):
            relation = "lies inside"
        else:
            continue
        raise OutputError(f"{flag} {output} {relation} the {what} {path}: an output may not be, contain or lie "
                          "inside an input (it would be destroyed or mixed with what it was made from); "
                          "choose a directory outside it")


def _owned(path: Path, owned_by: Owner) -> bool:
    if callable(owned_by):
        return bool(owned_by(path))
    return path.is_dir() and all((path / name).exists() for name in owned_by)


def _describe(owned_by: Owner) -> str:
    if callable(owned_by):
        return getattr(owned_by, "__doc__", None) or "this command's output"
    return "this command's output (it holds " + ", ".join(owned_by) + ")"


def check_replaceable(output: str | Path, *, overwrite: bool, owned_by: Owner, flag: str = "--out") -> bool:
    """Whether ``output`` exists and will be replaced; refuse what may not be replaced.

    A missing output or an empty directory is free. An existing one needs ``overwrite`` and must look
    like this command's own output (``owned_by``: file names it always holds, or a predicate).
    """
    out = Path(output)
    if not out.exists() and not out.is_symlink():
        return False
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return False
    if not _owned(out, owned_by):
        kind = "file" if out.is_file() else "directory" if out.is_dir() else "path"
        raise OutputError(f"{flag} {output} is an existing {kind} that does not look like {_describe(owned_by)}; "
                          "it is not replaced, even with --overwrite: choose a new or empty directory")
    if not overwrite:
        raise OutputError(f"{flag} {output} already exists (pass --overwrite to replace it)")
    return True


def fsync_tree(path: Path) -> None:
    """fsync every file below ``path`` and the directories that hold them."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_dir(output: str | Path, *, overwrite: bool, owned_by: Owner, flag: str = "--out",
               inputs: Mapping[str, str | Path] | None = None) -> Iterator[Path]:
    """Yield an empty directory beside ``output`` to write the new output into; on a clean exit it replaces
    ``output`` atomically (the old one is removed only after the new one is in place). On an error the
    staged directory is removed and ``output`` is untouched. Every check runs before anything is written.
    """
    out = Path(output)
    if inputs:
        check_disjoint(out, inputs, flag)
    replacing = check_replaceable(out, overwrite=overwrite, owned_by=owned_by, flag=flag)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if replacing or out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
