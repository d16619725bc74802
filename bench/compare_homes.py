"""Two featureflow homes compared file by file (sha256 of the bytes): how many files are identical per
top-level folder, and every file that differs or exists on one side only. For checking that a change
of code that should not change results (a refactor) writes the same artefacts.

    python bench/compare_homes.py HOME_BEFORE HOME_AFTER
"""

from __future__ import annotations

import sys
from pathlib import Path

from featureflow_dagster.storage import file_sha256

SKIP = (".locks",)


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in SKIP}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = Path(sys.argv[1]), Path(sys.argv[2])
    fa, fb = files(a), files(b)
    same = [rel for rel in sorted(fa & fb) if file_sha256(a / rel) == file_sha256(b / rel)]
    differ = sorted((fa & fb) - set(same))
    print(f"{len(fa & fb)} files on both sides: {len(same)} identical, {len(differ)} differ; "
          f"only in the first {len(fa - fb)}, only in the second {len(fb - fa)}")
    folders: dict[str, int] = {}
    for rel in same:
        folders[rel.split("/")[0]] = folders.get(rel.split("/")[0], 0) + 1
    print("identical per folder: " + ", ".join(f"{k} {v}" for k, v in sorted(folders.items())))
    for title, rels in (("differs", differ), ("only in the first", sorted(fa - fb)), ("only in the second", sorted(fb - fa))):
        for rel in rels:
            print(f"{title}: {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
