#!/usr/bin/env bash
# Re-run every command whose output the README quotes, one after another (2 cores: nothing else should run), on the
# checked-out commit; each command's output goes to $OUT/<name>.txt with the commit and the wall time.
#
#   bash docs/rerun_figures.sh /tmp/figures        # about 50 minutes on 2 CPU cores
#
# The demo is materialized from an empty folder first ($OUT/demo: its `.featureflow/demo` and `.dagster`), with
# `/usr/bin/time -v`, then the benches that read a demo home use it. Not here: `bench/gpu_scale.py` (needs a CUDA
# device; the README says where it was measured).
set -u
OUT=$(realpath -m "${1:?usage: rerun_figures.sh OUT_DIR}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
FF="$REPO/.venv/bin/featureflow"
mkdir -p "$OUT"
COMMIT=$(git -C "$REPO" rev-parse --short HEAD)
DIRTY=$(git -C "$REPO" status --porcelain --untracked-files=no | head -1)

run() {  # run NAME CMD...: output to $OUT/NAME.txt
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/index.txt"
  local t0=$(date +%s)
  { echo "# commit $COMMIT${DIRTY:+ (with uncommitted changes)}, $(date -u +%Y-%m-%dT%H:%MZ)"; echo "# $*"; "$@"; echo "# exit $?"; } \
    > "$OUT/$name.txt" 2>&1
  echo "   $(( $(date +%s) - t0 )) s, $(tail -1 "$OUT/$name.txt")" | tee -a "$OUT/index.txt"
}

DEMO="$OUT/demo"
rm -rf "$DEMO" && mkdir -p "$DEMO"
export DAGSTER_HOME="$DEMO/.dagster" FEATUREFLOW_HOME="$DEMO/.featureflow/demo"
cd "$DEMO"
run demo_materialize /usr/bin/time -v "$FF" materialize
run demo_again bash -c "time '$FF' materialize"
run demo_status bash -c "for i in 1 2 3; do /usr/bin/time -f '%e s wall' '$FF' status | tail -1; done"
run demo_plan bash -c "time '$FF' plan"
cd "$REPO"
run patching_tables "$PY" docs/patching_tables.py "$FEATUREFLOW_HOME"
run demo_tables "$PY" docs/demo_tables.py "$FEATUREFLOW_HOME"
run idle_ticks "$PY" bench/idle_ticks.py --home "$FEATUREFLOW_HOME"
run idle_ui "$PY" bench/idle_ui.py --lineage demo --warmup 90 --window 240
run activation_collection "$PY" bench/activation_collection.py --home "$FEATUREFLOW_HOME"
run correlation_demo "$PY" bench/correlation.py --home "$FEATUREFLOW_HOME" --edge base__packages --dense-rows 1024
run merge_sweep "$PY" bench/merge_sweep.py --home "$FEATUREFLOW_HOME"
run sae_training "$PY" bench/sae_training.py --home "$FEATUREFLOW_HOME" --steps 625
unset DAGSTER_HOME FEATUREFLOW_HOME
run correlation_synthetic "$PY" bench/correlation.py --tokens 100000
run plan_paper bash -c "cd '$OUT' && DAGSTER_HOME='$OUT/plan_paper_dagster' '$FF' plan paper"
run staleness_table "$PY" docs/staleness_table.py
run automation_daemon "$PY" bench/automation_daemon.py --dir "$OUT/automation"
run executors "$PY" bench/executors.py --lineage micro --workers 2 --repeats 2
run autointerp_micro "$PY" bench/autointerp_micro.py
run planted "$PY" bench/planted.py
run sae_recovery "$PY" bench/sae_recovery.py
run collection_families "$PY" bench/collection_families.py
run structure "$PY" bench/structure.py
echo "done: $OUT/index.txt"
