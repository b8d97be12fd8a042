# Sourced by the GPU-machine capacity scripts. `held SUMMARY COLUMN`: true when every model of one
# run's summary CSV (a header, then a line per model) has an SLO attainment (its COLUMN-th field)
# of at least 99%, false when one has less or the run left no line (it failed).
held() {
  awk -F, -v c="$2" 'NR > 1 { n++; if ($c < 0.99) miss = 1 } END { exit (n > 0 && !miss) ? 0 : 1 }' "$1"
}
