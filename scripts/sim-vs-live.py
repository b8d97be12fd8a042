#!/usr/bin/env python3
"""The simulator's capacity against live capacity on the GPU, one table (issue 18).

Live: the capacity.csv files that scripts/gpu-capacity.sh and scripts/triton-peer.sh append to
(one line per model and run). A run holds a load when every model keeps >= 99% of its requests
within its SLO; a policy's live bracket is the highest load at which every run held and the
lowest load above it at which a run missed. Simulated: the folders `gpuslice evaluate --capacity
--like-gpu-backend --calibration builtin:h200-calibration --out DIR` writes (capacity.csv, the
mean over seeds). A scenario is told by its models (both files name them).

Usage:
  sim-vs-live.py --live [LABEL=]PATH[@POLICY,...] ... --sim [LABEL=]DIR ...
PATH is a capacity.csv or a folder searched for them; LABEL= names every policy of that source
(e.g. `--live "default-mps 32/8 ms sent at 8=bench/.../capacity-32-8ms-min8"`); @POLICY,...
reads only those policies' runs from it (runs of other builds can then be left out).
"""
import argparse
import csv
import pathlib
import statistics
import sys

SLO_SHARE = 0.99
SCENARIOS = {
    frozenset({"densenet121", "resnext50_32x4d", "vgg16"}): "gpu-trio",
    frozenset({"mobilenet_v3_large", "densenet121", "vgg16"}): "mixed-slo-trio",
}


def labelled(arg):
    """(label or None, path, the policies to read or None for all) of one source argument."""
    label, _, path = arg.rpartition("=")
    path, _, only = path.partition("@")
    return (label or None), pathlib.Path(path), (set(only.split(",")) if only else None)


def scenario_of(models):
    models = list(models)
    return SCENARIOS.get(frozenset(models), "+".join(sorted(models)))


def live_runs(label, path, only):
    """(scenario, policy, load, held) per run, from one capacity.csv or every one under a folder."""
    files = [path] if path.is_file() else sorted(path.rglob("capacity.csv"))
    if not files:
        sys.exit(f"{path}: no capacity.csv")
    for f in files:
        run, key = [], None
        rows = list(csv.DictReader(open(f)))
        if rows and "slo_attainment" not in rows[0]:
            continue  # an `evaluate --capacity` folder's file, not a live one
        # A run is the consecutive lines of one policy and load naming each model once (and
        # no more than a known scenario's models: two scenarios' runs may follow at one load).
        for row in rows + [None]:
            k = row and (row["policy"], row["load_scale"])
            names = {r["model"] for r in run}
            if run and (k != key or row["model"] in names or frozenset(names) in SCENARIOS):
                held = all(float(r["slo_attainment"]) >= SLO_SHARE for r in run)
                if only is None or key[0] in only:
                    yield scenario_of(r["model"] for r in run), label or key[0], float(key[1]), held
                run = []
            if row:
                run.append(row)
                key = k


def simulated(label, folder, only):
    """(scenario, policy) -> mean capacity over seeds, from an `evaluate --capacity` folder."""
    models = {r["model"] for r in csv.DictReader(open(folder / "probes.csv"))}
    by_policy = {}
    for r in csv.DictReader(open(folder / "capacity.csv")):
        if only is not None and r["policy"] not in only:
            continue
        by_policy.setdefault(label or r["policy"], []).append(float(r["capacity"]))
    return {(scenario_of(models), p): statistics.mean(c) for p, c in by_policy.items()}


def bracket(runs):
    """(highest load every run held, lowest load above it where a run missed)."""
    loads = sorted({load for load, _ in runs})
    held = None
    for load in loads:
        if all(h for l, h in runs if l == load):
            held = load
        else:
            break
    missed = next((load for load in loads if (held is None or load > held) and not all(h for l, h in runs if l == load)), None)
    return held, missed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--live", nargs="+", default=[], help="[LABEL=]capacity.csv or folder of live runs[@POLICY,...]")
    p.add_argument("--sim", nargs="*", default=[], help="[LABEL=]folder of `evaluate --capacity` output[@POLICY,...]")
    a = p.parse_args()
    runs = {}
    for arg in a.live:
        for scenario, policy, load, held in live_runs(*labelled(arg)):
            runs.setdefault((scenario, policy), []).append((load, held))
    sims = {}
    for arg in a.sim:
        sims.update(simulated(*labelled(arg)))
    fmt = lambda x: "-" if x is None else f"x{x:g}"
    print("| scenario | policy | live held | live missed | simulator | off the live bracket |")
    print("|---|---|---|---|---|---|")
    within = total = 0
    for key in sorted(set(runs) | set(sims)):
        held, missed = bracket(runs.get(key, []))
        sim = sims.get(key)
        off = "-"
        if sim is not None and (held is not None or missed is not None):
            total += 1
            lo, hi = held, missed
            if lo is not None and sim < lo:
                d = sim / lo - 1
            elif hi is not None and sim > hi:
                d = sim / hi - 1
            else:
                d = 0.0
            within += abs(d) <= 0.10
            off = f"{d:+.0%}" if d else "0 (inside)"
        print(f"| {key[0]} | {key[1]} | {fmt(held)} | {fmt(missed)} | {'-' if sim is None else f'{sim:.3f}'} | {off} |")
    print(f"\nwithin 10% of the live bracket: {within} of {total}")


if __name__ == "__main__":
    main()
