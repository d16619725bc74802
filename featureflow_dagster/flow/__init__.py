"""Feature flow along the lineage (Horn & Elliott 2024, §3).

Per edge parent → child, both SAEs encode the same tokens (sparse codes on disk); the correlation
(`correlation.correlate_features`) gives every feature's best partners. A parent feature *persists*
when some child feature correlates above the threshold (default 0.8, `DEFAULT_THRESHOLD`), else it *disappears*; a child
feature with no parent feature above the threshold *emerged*. A parent feature matched by several
child features is a *split*; a child feature matched by several parent features is a *merge*
(within the top-k partners kept). Dead features (never varying on these tokens) are their own class.

- `codes`: the tokens an edge's two SAEs encode and their sparse codes on disk;
- `matching`: each feature's partners by exact r and by decoder cosine, and the two methods' agreement;
- `classify`: the statuses (said here once) and each edge's classification at the threshold, by matching
  or, with `flow.warm_start`, by aligned pairs (feature i of the parent's SAE and of the child's SAE warm-started from it);
- `lineage_flow`: over the whole lineage, trajectories, headline counts, case studies, Sankey volumes.
"""

from featureflow_dagster.flow.classify import (
    BASE_ORIGIN, DEAD, DISAPPEARS, EMERGED, PERSISTED, PERSISTS, STATUSES, classify_aligned, classify_edge, edge_counts,
    method_agreement, node_origin, tables_from_classification
)
from featureflow_dagster.flow.codes import (
    edge_windows, encode_edge, read_code_chunks, to_csr, write_codes
)
from featureflow_dagster.flow.matching import (
    EdgeCorrelation, add_cosines, agreement, correlate_edge, decoder_matches, decoder_table, matches_table
)
from featureflow_dagster.flow.lineage_flow import (
    LineageFlow, case_studies, classify_aligned_lineage, classify_lineage, describe_cases, emerged_node, flow_volumes, headline_counts,
    lineage_paths, lost_node, trajectories, trajectory_summary
)

__all__ = [
    "BASE_ORIGIN", "DEAD", "DISAPPEARS", "EMERGED", "EdgeCorrelation", "LineageFlow", "PERSISTED", "PERSISTS",
    "STATUSES", "add_cosines", "agreement", "case_studies", "classify_aligned", "classify_aligned_lineage", "classify_edge", "classify_lineage", "correlate_edge",
    "decoder_matches", "decoder_table", "describe_cases", "edge_counts", "edge_windows", "emerged_node",
    "encode_edge", "flow_volumes", "headline_counts", "lineage_paths", "lost_node", "matches_table", "method_agreement",
    "node_origin",
    "read_code_chunks", "tables_from_classification", "to_csr", "trajectories", "trajectory_summary", "write_codes"
]
