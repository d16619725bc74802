"""The lineage file: a YAML declaration of models (a base, its fine-tunes, merges of those).

- `schema`: the settings, as frozen pydantic models (what each field means is its description);
- `graph`: `Lineage`, the file's top level with the queries on its graph, and `Edge`;
- `validation`: reading a file and checking everything pydantic cannot (`LineageError` names the
  file, the node and the field, and says what would fix it) before any compute.

Shipped lineages live in `featureflow_dagster/lineages/<name>.yaml`; `resolve_lineage_path` turns
`FEATUREFLOW_LINEAGE` (a shipped name or a path) into a file.
"""

from featureflow_dagster.lineage.graph import Edge, Lineage
from featureflow_dagster.lineage.schema import (
    DEFAULT_THRESHOLD, ENTITY_BOXES, ENTITY_OBJECTS, AutointerpSpec, DataSpec, ExamplesSpec, FilesSource, FlowSpec,
    HFSource, LineageError, MergeSpec, ModelSpec, NodeSpec, PatchingSpec, PretrainedSpec, SAEChecks, SAESpec, StdlibSource,
    SweepSpec, TaskSpec, TokenizerSpec, TrainingSpec
)
from featureflow_dagster.lineage.validation import (
    DEFAULT_LINEAGE, SHIPPED_LINEAGES, load_lineage, parse_lineage, resolve_lineage_path, validate_graph
)

__all__ = [
    "DEFAULT_LINEAGE", "DEFAULT_THRESHOLD", "ENTITY_BOXES", "ENTITY_OBJECTS", "SHIPPED_LINEAGES", "AutointerpSpec",
    "DataSpec", "Edge", "ExamplesSpec", "FilesSource", "FlowSpec", "HFSource", "Lineage", "LineageError", "MergeSpec",
    "ModelSpec", "NodeSpec", "PatchingSpec", "PretrainedSpec", "SAEChecks", "SAESpec", "StdlibSource", "SweepSpec", "TaskSpec",
    "TokenizerSpec", "TrainingSpec", "load_lineage", "parse_lineage", "resolve_lineage_path", "validate_graph",
]
