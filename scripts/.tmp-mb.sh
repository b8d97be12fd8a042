G=./out/gpuslice
mkdir -p /tmp/r
sed -e 's/rate = 900/rate = 1050/' -e 's/rate = 1500/rate = 1750/' -e 's/rate = 1200/rate = 1400/' scenarios/gpu-trio.toml > /tmp/trio-70.toml
echo "== model-based 3600"
$G --log warn gpu-run --config scenarios/gpu-trio.toml --policy model-based --pool-levels 20,25,30,35,40,45,50,55,60 --out /tmp/r/load60-model-based-v3 2>&1 | grep -v "^\s*$" | tail -9
echo "== model-based 4200"
$G --log warn gpu-run --config /tmp/trio-70.toml --policy model-based --pool-levels 20,25,30,35,40,45,50,55,60 --out /tmp/r/load70-model-based-v3 2>&1 | grep -v "^\s*$" | tail -9
cd /tmp/r && tar czf $OUT/runs.tgz load*
