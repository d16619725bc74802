"""The caching promise across featureflow's own changes: the version of every asset partition of every shipped
lineage (its settings' hash and its asset's code version) is held in `versions.json` beside this file. A change
of featureflow that moves one (a new option that enters the settings at its default, a renamed field, a code
version bumped) makes every store holding that partition recompute it and everything below it; this test names
which ones moved, so that it happens only on purpose.

    python tests/test_versions.py --update    # after a change that should recompute them; say so in the commit
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HELD = Path(__file__).with_name("versions.json")


def current() -> dict:
    from featureflow_dagster.assets import ARTEFACTS
    from featureflow_dagster.assets.config import config_versions
    from featureflow_dagster.lineage import load_lineage
    from featureflow_dagster.lineage.validation import SHIPPED_LINEAGES

    return {"code_versions": {a.name: a.code_version for a in ARTEFACTS},
            "settings": {name: config_versions(load_lineage(name), ARTEFACTS) for name in SHIPPED_LINEAGES}}


def test_no_partition_of_a_shipped_lineage_changes_version_unannounced():
    held, now = json.loads(HELD.read_text()), current()
    # a new asset has no partition in any existing store: only a changed code version recomputes anything
    moved = [f"code version of {a}: {held['code_versions'][a]} -> {v}"
             for a, v in now["code_versions"].items() if a in held["code_versions"] and held["code_versions"][a] != v]
    for lineage, versions in now["settings"].items():
        before = held["settings"].get(lineage, {})
        moved += [f"{lineage}: {key} {'is new' if key not in before else 'changed version'}"
                  for key, v in versions.items() if before.get(key) != v]
        moved += [f"{lineage}: {key} is gone" for key in before if key not in versions]
    assert not moved, ("these asset partitions would be recomputed in every existing store (if that is intended, run "
                       "`python tests/test_versions.py --update` and say so in the commit):\n  " + "\n  ".join(moved[:40]))


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    HELD.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {HELD}")
