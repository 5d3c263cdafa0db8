#!/bin/bash
# Side by side on one machine: `benchmarks/bench_suite.py` of an older tree and of this one, one case at a time.
#
#   git archive 21d1922 | (mkdir -p .bench_old && tar -x -C .bench_old)
#   bash benchmarks/compare_trees.sh .bench_old OUT old:ddpm_b128 new:ddpm_b128 \
#       "new:dit_xl_2:--config.bench.train_only=True" "old:dit_xl_2:--config.bench.train_only=True"
#
# Each spec is TREE:CASE[:EXTRA FLAG], TREE `old` (the first argument) or `new` (this tree); results land in
# OUT/<tree>_<case>[_x].json and the tables on stdout.
set -o pipefail
old_tree=$1 out=$2
shift 2
mkdir -p "$out"
for spec in "$@"; do
  tree=${spec%%:*} rest=${spec#*:}
  case_=${rest%%:*} extra=${rest#*:}
  [ "$extra" = "$rest" ] && extra=""
  root=$([ "$tree" = old ] && echo "$old_tree" || echo .)
  label=${tree}_${case_}$([ -n "$extra" ] && echo _x)
  echo "=== $label $extra"
  python3 "$root/benchmarks/bench_suite.py" --cases "$case_" --out "/tmp/compare_trees/$label" \
      ${extra:+--extra=$extra} 2>&1 | tail -3 | cut -c1-1500
  cp /tmp/compare_trees/"$label"/*.json "$out/$label.json" 2>/dev/null
done
