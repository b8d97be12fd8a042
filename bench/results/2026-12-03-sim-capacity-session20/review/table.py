import csv, collections, os
S = ["default","step-4x","azure-llm","gpu-trio","gpu-step","mixed-slo-trio","bench-events"]
P = ["temporal","default-mps","triton-like","gslice","model-based","oracle"]
def caps(d):
    c = collections.defaultdict(list)
    f = f"{d}/capacity.csv"
    if not os.path.exists(f): return {}
    for r in csv.DictReader(open(f)):
        c[r["policy"]].append(float(r["capacity"]))
    return {p: sum(v)/len(v) for p, v in c.items()}
print("| scenario | " + " | ".join(P[:4]) + " | model-based before / after | oracle before / after |")
print("|---|---|---|---|---|---|---|")
for s in S:
    a = caps(f"after/{s}"); b = caps(f"before-210edc8/{s}")
    if s == "bench-events":
        a = {**caps("../../2026-12-03-sim-capacity-session18/bench-events"), **a}
    base = " | ".join(f"{a.get(p, float('nan')):.3f}" for p in P[:4])
    print(f"| {s} | {base} | {b.get('model-based',float('nan')):.3f} / {a.get('model-based',float('nan')):.3f} | {b.get('oracle',float('nan')):.3f} / {a.get('oracle',float('nan')):.3f} |")
