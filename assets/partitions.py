"""Partitions derived from the lineage file.

- node partitions: one key per lineage node (`base`, `lua`, ...), for node-level assets.
- data-node partitions: the nodes that carry training data (bases and fine-tunes).
- model assets: Dagster forbids a statically partitioned asset from depending on other partitions
  of itself, so the model stage is one asset per node, `model/<node>`, each with that node's single
  partition; partition mappings then connect it exactly to its parents and to node-partitioned
  assets up- and downstream. See the README's architecture section.
"""

from __future__ import annotations

import dagster as dg

from featureflow_dagster.lineage import Lineage


def node_partitions(lineage: Lineage) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(lineage.node_names)


def data_node_partitions(lineage: Lineage) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([n for n in lineage.node_names if lineage.node(n).data is not None])


def model_key(node: str) -> dg.AssetKey:
    return dg.AssetKey(["model", node])


def single_node_partition(node: str) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([node])


def same_node(node: str) -> dg.StaticPartitionMapping:
    """Map partition `node` of a node-partitioned asset to the single partition of a per-node asset."""
    return dg.StaticPartitionMapping({node: node})


def fan_out(edges: list[tuple[str, str]]) -> dg.StaticPartitionMapping:
    """A StaticPartitionMapping from (upstream partition, downstream partition) pairs; an upstream
    partition may feed several downstream partitions."""
    mapping: dict[str, set[str]] = {}
    for up, down in edges:
        mapping.setdefault(up, set()).add(down)
    return dg.StaticPartitionMapping({up: sorted(downs) for up, downs in mapping.items()})


def ancestry_token_edges(lineage: Lineage) -> list[tuple[str, str]]:
    """(data-carrying ancestor or self, node) for every node: how `tokens` feeds per-node assets that read
    a node's whole data ancestry (activation stores, feature examples)."""
    return [(a, n) for n in lineage.node_names for a in lineage.data_ancestry(n)]


def edge_partitions(lineage: Lineage) -> dg.StaticPartitionsDefinition:
    """One key per parent -> child edge, its `Edge.key` (`parent__child`)."""
    return dg.StaticPartitionsDefinition([e.key for e in lineage.edges()])


def edge_ends(lineage: Lineage) -> list[tuple[str, str]]:
    """(node, edge key) for both ends of every edge: how node-partitioned assets feed edge partitions."""
    return [(n, e.key) for e in lineage.edges() for n in e]


def own_models(lineage: Lineage) -> list[dg.AssetDep]:
    """One dep per model/<n> on its own partition: how node-partitioned assets read their node's model."""
    return per_node_models([(n, n) for n in lineage.node_names])


def per_node_models(edges: list[tuple[str, str]]) -> list[dg.AssetDep]:
    """One dep per model/<n>, mapping its single partition to the downstream partitions in `edges`
    ((node, downstream partition) pairs)."""
    return [
        dg.AssetDep(model_key(n), partition_mapping=fan_out([e for e in edges if e[0] == n]))
        for n in sorted({e[0] for e in edges})
    ]
