"""Atomic writes: every artefact is written to a temporary sibling and renamed into place, so a
crash or a failed asset never leaves a half-written artefact nor destroys the previous one; and the
file locks that keep two processes off one partition (`file_lock`).

Every completed write is then offered to the process's commit hook (`committing`), which is how a
store on object storage (featureflow_dagster.remote) publishes each artefact, report and checkpoint
the moment it exists locally."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

_commit_hook: Callable[[Path], None] | None = None


@contextlib.contextmanager
def committing(hook: Callable[[Path], None] | None) -> Iterator[None]:
    """Call `hook(final)` after every atomic write completes in this process, while the block runs."""
    global _commit_hook
    previous, _commit_hook = _commit_hook, hook
    try:
        yield
    finally:
        _commit_hook = previous


def _committed(final: Path) -> None:
    if _commit_hook is not None:
        _commit_hook(final)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final` (old contents removed)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, final)
    _committed(final)


def replace_path(tmp: Path, final: Path) -> None:
    """Rename `tmp` (a file or folder) onto `final`; an existing folder is moved aside first and removed after."""
    old = None
    if final.is_dir():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed onto `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    _committed(final)


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(folder: Path) -> str:
    """One sha256 over every file below `folder`: each file's path relative to it and its own sha256, in path order."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(bytes.fromhex(file_sha256(path)))
    return h.hexdigest()


def lock_name(label: str) -> str:
    """The lock file's name of an asset partition (`label`, e.g. 'model/base[base]')."""
    return label.replace("/", "__") + ".lock"


@contextlib.contextmanager
def file_lock(path: Path, holder: str, busy: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) while the block runs, with `holder` written in it; the
    operating system releases it when the process dies, so a crash leaves none behind. When another process holds
    it, `busy(what that one wrote)` is called first: raise to refuse, return to wait for the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy(os.pread(fd, 4096, 0).decode(errors="replace").strip())
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
