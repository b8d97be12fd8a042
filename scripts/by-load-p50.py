"""Issue 15's light-load p50 criterion applied to every policy, not only model-based.

    python3 scripts/by-load-p50.py OUT/NAME...   (folders of `evaluate --capacity --by-load --out`)

Per scenario, the rows (load <= x0.5, model) where a policy's p50 is over 1.25x the fastest of
the other baselines' (for model-based: of the four baselines'), counted per policy: how often
each baseline would fail the test model-based is held to.
"""
import collections
import csv
import sys
BASE = ["temporal", "default-mps", "triton-like", "gslice"]
POL = BASE + ["model-based"]
for d in sys.argv[1:]:
    rows = collections.defaultdict(dict)
    for r in csv.DictReader(open(f"{d}/attainment-by-load.csv")):
        if float(r["load_scale"]) <= 0.5 + 1e-9:
            rows[(r["load_scale"], r["model"])][r["policy"]] = float(r["p50_ms"])
    fails = {p: [] for p in POL}
    for key, p50 in rows.items():
        for p in POL:
            others = [p50[q] for q in BASE if q != p and q in p50]
            if p in p50 and others and p50[p] > 1.25 * min(others):
                fails[p].append(f"x{float(key[0]):.2f} {key[1]} {p50[p]:.1f}/{min(others):.1f}")
    print(d.rstrip('/').split('/')[-1], len(rows), "rows;", "; ".join(f"{p} {len(f)}" for p, f in fails.items()))
    for p in POL:
        if fails[p] and p == "model-based":
            print("   model-based:", ", ".join(fails[p]))
