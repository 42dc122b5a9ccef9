#!/usr/bin/env bash
# The engine at real size on one GPU (issue 22's goals): builds random 1B- and 8B-shaped Llama
# checkpoints (benchmarks/big_checkpoints.py; no hub needed) and runs `switchgen bench --quick` on them,
# transformers' continuous batching beside our engine, and the skills-kit rollouts on CUDA. Every step
# has its own time limit and prints as it goes, so a cut-off run still shows what it measured.
#
#   bash benchmarks/gpu.sh [OUT] [STEP...]      # from the checkout, switchgen installed; OUT: /tmp/switchgen-gpu
#
# Steps (default: all, in this order; about 12 minutes on one H200, most of it building and loading):
#   build1b (~40 s)  bench1b (<= 150 s)  eager1b (<= 90 s: the same variants without CUDA graphs)
#   cb1b (<= 150 s: transformers' generate_batch vs ours, 32 prompts x 256 tokens)
#   build8b (~60 s, one checkpoint)  bench8b (<= 150 s, one query)  rollouts (<= 200 s: skills kit, 480 x k 4)
# Environment: SG (the switchgen command, default `switchgen`), PY (python, default python3).
set -uo pipefail
OUT=${1:-/tmp/switchgen-gpu}
shift || true
STEPS=${*:-build1b bench1b eager1b cb1b build8b bench8b rollouts}
SG=${SG:-switchgen}
PY=${PY:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"

step() {  # step LIMIT_S COMMAND...: run with a limit, say how it ended
  local limit=$1 start=$SECONDS
  shift
  echo "=== $* (limit ${limit} s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local code=$?
  echo "=== exit $code after $((SECONDS - start)) s"
}

skills_cuda() {  # the skills preset with every model on cuda
  "$PY" - "$OUT/skills-cuda.yaml" <<'EOF'
import sys, yaml
from switchgen.core.config import load_config
data = load_config("skills").model_dump(mode="json")
for cand in data["candidates"]:
    cand["device"] = "cuda"
data["switcher"]["device"] = "cuda"
open(sys.argv[1], "w").write(yaml.safe_dump(data, sort_keys=False))
EOF
}

echo "switchgen GPU bench: $(date -u +%FT%TZ), steps: $STEPS"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv 2>/dev/null || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
for s in $STEPS; do
  case $s in
    build1b) step 240 "$PY" "$HERE/big_checkpoints.py" "$OUT" 1b ;;
    bench1b) step 150 "$SG" bench --quick --config "$OUT/1b.yaml" --device cuda --json "$OUT/bench-1b.json" ;;
    eager1b) step 90 env SWITCHGEN_CUDA_GRAPHS=0 "$SG" bench --quick --config "$OUT/1b.yaml" --device cuda \
               --concurrency 1,8 --section-seconds 15 --json "$OUT/bench-1b-eager.json" ;;
    cb1b) step 150 "$PY" "$HERE/continuous_batching.py" --config "$OUT/1b.yaml" --device cuda --prompts 32 \
            --budget 256 --reps 2 ;;
    build8b) step 300 "$PY" "$HERE/big_checkpoints.py" "$OUT" 8b --models A ;;
    bench8b) step 150 "$SG" bench --quick --config "$OUT/8b.yaml" --device cuda --concurrency 1 \
               --json "$OUT/bench-8b.json" ;;
    rollouts) skills_cuda && step 200 "$SG" rollouts --overwrite \
                --task skills-switch --config "$OUT/skills-cuda.yaml" --max-new-tokens 12 --out "$OUT/rollouts.jsonl" \
                --instances 480 --k 4 --seed 0 --concurrency 16 --no-progress ;;
    *) echo "unknown step $s" ;;
  esac
done
