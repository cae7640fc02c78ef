"""Reads a run's TensorBoard events file with TensorBoard's own reader and checks it against
metrics.csv: every finite value of every row is a scalar `<phase>/<column>` at the row's step.

    python3 read_tensorboard.py RUN_DIR
"""
import csv
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    run = sys.argv[1]
    acc = EventAccumulator(f"{run}/tb", size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = list(csv.DictReader(open(f"{run}/metrics.csv")))
    assert rows, "metrics.csv has rows"
    checked = 0
    for row in rows:
        phase, step = row["phase"], int(row["step"])
        for column, text in row.items():
            if column in ("phase", "step"):
                continue
            value = float(text)
            if not math.isfinite(value):
                continue
            tag = f"{phase}/{column}"
            assert tag in tags, f"{tag} missing"
            events = [e for e in acc.Scalars(tag) if e.step == step]
            assert len(events) == 1, f"{tag} at step {step}: {len(events)} events"
            assert math.isclose(events[0].value, value, rel_tol=1e-6, abs_tol=1e-6), (
                tag, step, events[0].value, value)
            checked += 1
    print(f"tensorboard: {run}/tb ok: {len(tags)} tags, {checked} scalars match metrics.csv")


if __name__ == "__main__":
    main()
