"""Persist / disappear / emerge, splits, merges, trajectories and headline counts on hand-built matrices."""

import numpy as np

from featureflow_dagster.correlation import Correlation, FeatureMoments, TopMatches
from featureflow_dagster.flow import classify_edge, edge_counts, headline_counts, matches_table, trajectories
from featureflow_dagster.lineage import parse_lineage


def _corr(r: np.ndarray, k: int = 3, dead_parent=(), dead_child=()) -> Correlation:
    r = r.astype(float).copy()
    r[list(dead_parent), :] = np.nan
    r[:, list(dead_child)] = np.nan

    def top(mat):
        order = np.argsort(-np.nan_to_num(mat, nan=-np.inf), axis=1)[:, :k]
        vals = np.take_along_axis(mat, order, 1)
        return TopMatches(np.where(np.isnan(vals), -1, order), vals)

    def moments(size, dead):  # unit variance, or none at all for the dead features
        sum_sq = np.ones(size)
        sum_sq[list(dead)] = 0.0
        return FeatureMoments(tokens=1, sum=np.zeros(size), sum_sq=sum_sq)

    m, n = r.shape
    return Correlation(moments(m, dead_parent), moments(n, dead_child), top(r), top(r.T))


R = np.array([
    # child:  0     1     2     3
    [0.95, 0.10, 0.85, 0.00],  # parent 0 persists and splits into 0 and 2
    [0.20, 0.30, 0.10, 0.40],  # parent 1 disappears
    [0.05, 0.90, 0.00, 0.10],  # parent 2 persists into 1
    [0.10, 0.82, 0.00, 0.00],  # parent 3 persists into 1: child 1 is a merge of 2 and 3
])


def test_classification_splits_and_merges():
    parent, child = classify_edge(matches_table(_corr(R)), threshold=0.8)
    assert parent["status"].tolist() == ["persists", "disappears", "persists", "persists"]
    assert child["status"].tolist() == ["persisted", "persisted", "persisted", "emerged"]
    assert parent.loc[0, "split"] and sorted(parent.loc[0, "partners"]) == [0, 2]
    assert child.loc[1, "merge"] and sorted(child.loc[1, "partners"]) == [2, 3]
    assert edge_counts(parent, child) == {
        "parent_persisting": 3, "parent_disappearing": 1, "parent_dead": 0, "child_persisted": 3,
        "child_emerged": 1, "child_dead": 0, "splits": 1, "merges": 1}


def test_threshold_is_a_parameter_and_dead_features_are_their_own_class():
    parent, child = classify_edge(matches_table(_corr(R, dead_parent=[1], dead_child=[3])), threshold=0.9)
    assert parent["status"].tolist() == ["persists", "dead", "disappears", "disappears"]
    assert child["status"].tolist() == ["persisted", "emerged", "emerged", "dead"]


LINEAGE = {
    "name": "t", "model": {"d_model": 16, "d_mlp": 32, "n_heads": 2, "n_ctx": 16},
    "nodes": [
        {"name": "base", "kind": "base", "data": {"sources": [{"name": "s", "kind": "stdlib", "what": "docs"}]}},
        {"name": "lua", "kind": "finetune", "parents": ["base"], "data": {"sources": [{"name": "l", "kind": "stdlib", "what": "docs"}]}},
        {"name": "stories", "kind": "finetune", "parents": ["base"], "data": {"sources": [{"name": "t", "kind": "stdlib", "what": "docs"}]}},
        {"name": "luastories", "kind": "merge", "parents": ["lua", "stories"]},
    ],
}


def test_trajectories_and_headline_counts_through_a_merge():
    lin = parse_lineage(LINEAGE)
    # base -> lua: base 0 -> lua 0, base 1 -> lua 1, base 2 disappears; lua 2 emerged
    b_l = np.array([[0.9, 0, 0], [0, 0.9, 0], [0, 0, 0.1]])
    # base -> stories: only base 2 persists (into stories 2)
    b_s = np.array([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.9]])
    # lua -> luastories: lua 0 -> ls 0, lua 2 -> ls 1; stories -> luastories: stories 2 -> ls 2
    l_ls = np.array([[0.9, 0, 0], [0, 0, 0], [0, 0.9, 0]])
    s_ls = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0.9]])
    tables = {e: classify_edge(matches_table(_corr(m)), 0.8) for e, m in {
        ("base", "lua"): b_l, ("base", "stories"): b_s, ("lua", "luastories"): l_ls, ("stories", "luastories"): s_ls}.items()}
    heads = headline_counts(lin, tables)
    assert heads["base_features_persisting_into_any_child"] == 3
    merge = heads["merges"]["luastories"]
    assert merge["traceable_to_any_parent"] == 3
    assert merge["per_parent"]["lua"] == {"traceable": 2, "emerged_in_finetuning": 1, "persisted_from_ancestor": 1}
    assert merge["per_parent"]["stories"] == {"traceable": 1, "emerged_in_finetuning": 0, "persisted_from_ancestor": 1}
    traj = trajectories(lin, tables)
    via_lua = traj[traj["path"] == "base>lua>luastories"].set_index("start")
    assert via_lua.loc[0, ["middle", "end"]].tolist() == [0, 0]  # persists all the way
    assert via_lua.loc[1, ["middle", "end"]].tolist() == [1, -1]  # persists into lua, then disappears
    assert via_lua.loc[2, ["middle", "end"]].tolist() == [-1, -1]  # gone at the first hop
    assert (traj["path"] == "base>stories>luastories").sum() == 3
