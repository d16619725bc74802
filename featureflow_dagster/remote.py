"""A lineage's artefacts on shared storage (object storage or any fsspec file system), mirrored into
a local folder: how several machines (Kubernetes pods) share one home.

Every artefact is a *unit*: one file or folder that was written atomically under the local home
(`storage.atomic_file` / `atomic_dir`: a model folder, a parquet table, a report, a checkpoint).
Publishing a unit uploads it under a fresh version key and only then creates an empty marker:

    <url>/data/<unit>@<version>[/...]    the unit's bytes, never changed after upload
    <url>/refs/<unit>@<version>          created last: from this moment the version exists

A reader lists `refs/`, takes each unit's newest version and downloads it into a temporary local
path that is renamed into place, so it sees the old version or the new one, never a mixture, on any
backend whose listing shows a created object only after the objects written before it (strong
read-after-write consistency: S3 since 2020, GCS, Azure Blob, a shared POSIX file system, fsspec's
memory file system). Backends that cannot promise that, or cannot list, are refused by name. Older
versions are deleted after a newer one is published.

Versions are ordered by a counter taken from the store, not by any machine's clock: a new version of a
unit is numbered one above the highest it finds published, so a publication that sees another is newer
than it whatever the two machines' clocks say (two publications of one unit at the same moment get the
same number and the random suffix orders them; both are whole, one wins). A finished training retracts
its checkpoint (`retract`: every published version), so that no machine downloads or resumes from it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import threading
import uuid
from pathlib import Path

from featureflow_dagster.storage import replace_path

# Protocols whose listing is strongly consistent and that can create, list and delete objects.
ATOMIC_PROTOCOLS = {"file", "local", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
_VERSIONS = ".remote"  # under the local home: <unit>.version holds the version the local copy is


class RemoteStoreError(RuntimeError):
    pass


def open_remote(url: str):
    """(file system, root path) for a store URL; refuses backends that cannot publish atomically."""
    import fsspec

    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol not in ATOMIC_PROTOCOLS:
        raise RemoteStoreError(
            f"store URL '{url}': the '{protocol}' file system cannot publish an artefact atomically or list "
            f"what was published (featureflow needs one of {', '.join(sorted(ATOMIC_PROTOCOLS))}); "
            "use object storage (s3://, gs://, az://) or a shared volume as FEATUREFLOW_HOME")
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise RemoteStoreError(f"store URL '{url}': {e}") from None
    return fs, root.rstrip("/")


def new_version(published: list[str] = ()) -> str:
    """One above the highest counter among the unit's `published` versions, with a random suffix: sortable
    by order of publication as the store saw it, unique across machines, independent of their clocks.
    (Stores written before counters hold clock-stamped counters; one above them still sorts after.)"""
    counters = [int(v.split("-", 1)[0]) for v in published if v.split("-", 1)[0].isdigit()]
    return f"{max(counters, default=0) + 1:020d}-{uuid.uuid4().hex[:8]}"


class Mirror:
    """The remote side of one home: publish units written locally, fetch units written elsewhere."""

    def __init__(self, url: str, local_root: Path):
        self.url = url
        self.fs, self.root = open_remote(url)
        self.local = Path(local_root)
        self._lock = threading.Lock()
        self._posix = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def _put(self, local: Path, target: str) -> None:
        if self._posix:  # a POSIX file system needs the folders; object stores have none
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        self.fs.put_file(str(local), target)

    def _touch(self, target: str) -> None:
        if self._posix:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        self.fs.pipe(target, b"")

    # -- names ---------------------------------------------------------------------------------
    def _refs(self, unit: str = "") -> str:
        return posixpath.join(self.root, "refs", unit) if unit else posixpath.join(self.root, "refs")

    def _data(self, unit: str, version: str) -> str:
        return posixpath.join(self.root, "data", f"{unit}@{version}")

    def _record(self, unit: str) -> Path:
        return self.local / _VERSIONS / f"{unit}.version"

    def local_version(self, unit: str) -> str | None:
        path = self._record(unit)
        return path.read_text().strip() if path.is_file() else None

    def _set_local_version(self, unit: str, version: str) -> None:
        path = self._record(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(version)
        os.replace(tmp, path)

    def unit_of(self, final: Path) -> str | None:
        """The unit name of a local path under the home (posix, relative), None outside it or in the
        home's own bookkeeping (locks, version records)."""
        try:
            rel = Path(final).resolve().relative_to(self.local.resolve()).as_posix()
        except ValueError:
            return None
        parts = rel.split("/")
        if parts[0] in (_VERSIONS, ".locks"):
            return None
        if any(p.startswith(".") and (".tmp-" in p or ".old-" in p) for p in parts[:-1]):
            return None  # written inside a folder that is itself being written: published with it
        return rel

    # -- listing -------------------------------------------------------------------------------
    def versions(self, below: str = "") -> dict[str, list[str]]:
        """Published versions (oldest first) of every unit equal to `below` or inside it."""
        start = posixpath.dirname(self._refs(below)) if below else self._refs()
        if not self.fs.exists(start):
            return {}
        out: dict[str, list[str]] = {}
        prefix = self._refs().lstrip("/") + "/"  # file systems differ on a leading slash
        for path in self.fs.find(start):
            path = path.lstrip("/")
            if not path.startswith(prefix):
                continue
            unit, _, version = path[len(prefix):].rpartition("@")
            if unit and (not below or unit == below or unit.startswith(below.rstrip("/") + "/")):
                out.setdefault(unit, []).append(version)
        return {u: sorted(v) for u, v in out.items()}

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, final: Path) -> str | None:
        """Upload a unit just written locally; returns its version (None for paths outside the home)."""
        unit = self.unit_of(final)
        if unit is None or not Path(final).exists():
            return None
        with self._lock:
            version = new_version(self.versions(unit).get(unit, []))
            data = self._data(unit, version)
            if Path(final).is_dir():
                files = [p for p in sorted(Path(final).rglob("*")) if p.is_file()]
                for f in files:
                    self._put(f, posixpath.join(data, f.relative_to(final).as_posix()))
                if not files:
                    self._touch(posixpath.join(data, ".empty"))
            else:
                self._put(Path(final), data)
            self._touch(f"{self._refs(unit)}@{version}")  # the publication
            self._set_local_version(unit, version)
            for old in self.versions(unit).get(unit, [])[:-1]:
                self._remove(unit, old)
        return version

    def retract(self, final: Path) -> int:
        """Withdraw every published version of a unit (a finished training's checkpoint) and forget the local
        copy's version; returns how many versions were removed."""
        unit = self.unit_of(final)
        if unit is None:
            return 0
        with self._lock:
            versions = self.versions(unit).get(unit, [])
            for version in versions:
                self._remove(unit, version)
            self._record(unit).unlink(missing_ok=True)
        return len(versions)

    def _remove(self, unit: str, version: str) -> None:
        for path in (f"{self._refs(unit)}@{version}", self._data(unit, version)):
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass

    # -- fetching ------------------------------------------------------------------------------
    def fetch(self, below: str = "") -> list[str]:
        """Bring every unit at or inside `below` whose newest published version differs from the local
        copy's; returns the units fetched. Each lands by an atomic rename, as if written locally."""
        fetched = []
        for unit, versions in self.versions(below).items():
            newest = versions[-1]
            if self.local_version(unit) == newest:
                continue
            self._download(unit, newest)
            fetched.append(unit)
        return fetched

    def _download(self, unit: str, version: str, attempts: int = 3) -> None:
        final = self.local / unit
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.fetch-{uuid.uuid4().hex[:8]}")
        data = self._data(unit, version)
        try:
            if self.fs.isdir(data):
                tmp.mkdir()
                for path in self.fs.find(data):
                    rel = posixpath.relpath("/" + path.lstrip("/"), "/" + data.lstrip("/"))
                    if rel == ".empty":
                        continue
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(path, str(tmp / rel))
            else:
                self.fs.get_file(data, str(tmp))
        except FileNotFoundError:  # replaced by a newer version while we read: take that one
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            if attempts <= 1:
                raise
            newest = self.versions(unit).get(unit, [version])[-1]
            return self._download(unit, newest, attempts - 1)
        replace_path(tmp, final)  # not an atomic write of this process: no commit hook, nothing re-published
        self._set_local_version(unit, version)
