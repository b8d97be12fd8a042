"""check.py BASEDIR NEWDIR scenario...: issue 15's per-load test, model-based rows from NEWDIR, baselines from BASEDIR."""
import csv, sys, collections
BASE = ["temporal", "default-mps", "triton-like", "gslice"]
base, new = sys.argv[1], sys.argv[2]
for s in sys.argv[3:]:
    rows = collections.defaultdict(dict)
    for r in csv.DictReader(open(f"{base}/{s}/attainment-by-load.csv")):
        if r["policy"] in BASE:
            rows[(float(r["load_scale"]), r["model"])][r["policy"]] = (float(r["slo_attainment"]), float(r["p50_ms"]))
    mb = {}
    for r in csv.DictReader(open(f"{new}/{s}/attainment-by-load.csv")):
        if r["policy"] == "model-based":
            mb[(float(r["load_scale"]), r["model"])] = (float(r["slo_attainment"]), float(r["p50_ms"]))
    fails = []
    for key, (att, p50) in sorted(mb.items()):
        b = rows.get(key)
        if not b:
            continue
        best_att = max(v[0] for v in b.values())
        best_p50 = min(v[1] for v in b.values())
        if att < best_att - 0.005:
            fails.append(f"x{key[0]:.2f} {key[1]} attainment {att*100:.2f}% < {best_att*100:.2f}%")
        if key[0] <= 0.5 + 1e-9 and p50 > 1.25 * best_p50:
            fails.append(f"x{key[0]:.2f} {key[1]} p50 {p50:.2f} > 1.25 x {best_p50:.2f}")
    print(s, len(mb), "rows,", len(fails), "failing:", "; ".join(fails))
