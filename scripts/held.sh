# Sourced by the GPU-machine capacity scripts. `held CSV POLICY SCALE`: true when every model of
# POLICY's run at SCALE in CSV (the capacity.csv both scripts write: policy, load_scale, model,
# arrivals, completed, dropped, slo_attainment, ...) kept >= 99% of its requests within its SLO,
# false when one did not or the run left no line (it failed).
held() {
  awk -F, -v p="$2" -v s="$3" '$1 == p && $2 == s { n++; if ($7 < 0.99) miss = 1 }
    END { exit (n > 0 && !miss) ? 0 : 1 }' "$1"
}
