"""Issue 15's per-load test on model-based rows of one run against baseline rows of another.

    python3 check.py BASEDIR NEWDIR SCENARIO...             against the fastest baseline per model
    python3 check.py --best-capacity BASEDIR NEWDIR SCENARIO...   against the baseline of highest capacity

BASEDIR/NEWDIR hold `evaluate --capacity --by-load --out` folders named after the scenarios.
A row fails where model-based's SLO attainment is more than 0.5 points below the baseline's
(the best of the four, or the one baseline), or, at loads up to x0.5, its p50 is over 1.25x the
baseline's (the fastest of the four, or the one baseline).
"""
import collections
import csv
import sys

BASE = ["temporal", "default-mps", "triton-like", "gslice"]
args = sys.argv[1:]
by_capacity = args[0] == "--best-capacity"
if by_capacity:
    args = args[1:]
base, new, scenarios = args[0], args[1], args[2:]
for s in scenarios:
    rows = collections.defaultdict(dict)
    for r in csv.DictReader(open(f"{base}/{s}/attainment-by-load.csv")):
        if r["policy"] in BASE:
            rows[(float(r["load_scale"]), r["model"])][r["policy"]] = (float(r["slo_attainment"]), float(r["p50_ms"]))
    against = None
    if by_capacity:
        capacity = collections.defaultdict(list)
        for r in csv.DictReader(open(f"{base}/{s}/capacity.csv")):
            if r["policy"] in BASE:
                capacity[r["policy"]].append(float(r["capacity"]))
        against = max(capacity, key=lambda p: sum(capacity[p]) / len(capacity[p]))
    mb = {}
    for r in csv.DictReader(open(f"{new}/{s}/attainment-by-load.csv")):
        if r["policy"] == "model-based":
            mb[(float(r["load_scale"]), r["model"])] = (float(r["slo_attainment"]), float(r["p50_ms"]))
    fails = []
    for key, (att, p50) in sorted(mb.items()):
        b = {p: v for p, v in rows.get(key, {}).items() if against in (None, p)}
        if not b:
            continue
        best_att = max(v[0] for v in b.values())
        best_p50 = min(v[1] for v in b.values())
        if att < best_att - 0.005:
            fails.append(f"x{key[0]:.2f} {key[1]} attainment {att*100:.2f}% < {best_att*100:.2f}%")
        if key[0] <= 0.5 + 1e-9 and p50 > 1.25 * best_p50:
            fails.append(f"x{key[0]:.2f} {key[1]} p50 {p50:.2f} > 1.25 x {best_p50:.2f}")
    print(s, *([f"(against {against})"] if against else []), len(mb), "rows,", len(fails), "failing:", "; ".join(fails))
