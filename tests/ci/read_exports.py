"""Reads every Parquet file a run exported with pyarrow (an independent client) and checks the
DESIGN §9 schema and row counts. Usage: python3 read_exports.py RUN_DIR"""
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

U32, U64, F32, F64 = pa.uint32(), pa.uint64(), pa.float32(), pa.float64()
STR, BOOL = pa.string(), pa.bool_()

TRAJECTORIES = {
    "run_id": STR, "step": U64, "phase": STR, "task_id": U64, "env": STR, "sampler": STR,
    "budget": U32, "tree": U32, "leaf_node": U32, "node_path": pa.list_(U32), "prompt": STR,
    "text": STR, "reward": F32, "success": BOOL, "truncated": BOOL, "action_tokens": U32,
    "turns": U32, "advantage": F32, "estimator": STR,
}
NODES = {
    "run_id": STR, "step": U64, "task_id": U64, "tree": U32, "node_id": U32, "parent_id": U32,
    "depth": U32, "kind": STR, "tokens": pa.list_(U32), "text": STR,
    "logprobs": pa.list_(F32), "entropies": pa.list_(F32), "leaves_below": U32, "value": F32,
    "advantage": F32, "is_leaf": BOOL,
}
METRICS = [
    "step", "phase", "reward_mean", "success_rate", "loss", "kl", "entropy", "grad_norm", "lr",
    "generated_tokens", "prefill_tokens", "cached_tokens", "cache_read_share", "trajectories",
    "distinct_trajectories", "truncated", "zero_adv_groups_frac", "tokens_per_success",
    "tokens_per_s", "wall_ms",
]


def base_type(t):
    # Lists may name their item field differently ("item" / "element"); compare value types.
    return pa.list_(t.value_type) if pa.types.is_list(t) else t


def check_schema(table, expected, name):
    got = {f.name: base_type(f.type) for f in table.schema}
    for col, typ in expected.items():
        assert col in got, f"{name}: missing column {col}"
        assert got[col] == typ, f"{name}: column {col} is {got[col]}, expected {typ}"


def main(run):
    run = Path(run)
    traj = pq.read_table(run / "trajectories.parquet")
    nodes = pq.read_table(run / "nodes.parquet")
    metrics = pq.read_table(run / "metrics.parquet")
    check_schema(traj, TRAJECTORIES, "trajectories")
    check_schema(nodes, NODES, "nodes")
    for col in METRICS:
        assert col in metrics.column_names, f"metrics: missing column {col}"
    rl = [r for r in metrics.to_pylist() if r["phase"] == "rl"]
    assert rl, "metrics has RL rows"
    # One trajectory row per leaf: per step, as many rows as the metrics counted.
    per_step = {}
    for r in traj.select(["step"]).to_pylist():
        per_step[r["step"]] = per_step.get(r["step"], 0) + 1
    for r in rl:
        assert per_step.get(r["step"], 0) == r["trajectories"], (r["step"], per_step)
    leaves = sum(1 for r in nodes.select(["is_leaf"]).to_pylist() if r["is_leaf"])
    assert leaves == traj.num_rows, (leaves, traj.num_rows)
    print(f"pyarrow {pa.__version__}: {run} ok: {traj.num_rows} trajectories, "
          f"{nodes.num_rows} nodes, {metrics.num_rows} metrics rows")


if __name__ == "__main__":
    main(sys.argv[1])
