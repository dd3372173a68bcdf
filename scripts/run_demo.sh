#!/usr/bin/env bash
# The main job end to end on the embedded default: a local Ray head with token auth (started
# if none is running), then `ray job submit -- python jobs/tune_t3d.py`, which generates and
# ingests the demo set and runs a CPU-sized architecture search, then writes its report.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"  # `ray`, and the job's `python`, are the project's
export RAY_AUTH_MODE=token          # the cluster's only lock (RAY.md section 0)
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265
ROOT=${RAYLAB_DEMO_DIR:-$PWD/.demo}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)

[ -f ~/.ray/auth_token ] || ray get-auth-token --generate >/dev/null
if ray status >/dev/null 2>&1; then
  echo "using the running Ray cluster"
else
  ray start --head --dashboard-host=127.0.0.1 --disable-usage-stats >/dev/null
  echo "started a local Ray head (stop it with: ray stop)"
fi

LOG="$ROOT/last-job.log"
# Submits the working directory (.gitignore'd paths such as .demo/ stay behind) and follows
# the job's logs until it ends.
ray job submit --working-dir . -- python jobs/tune_t3d.py --root "$ROOT" | tee "$LOG"

python - "$LOG" <<'PY'
import json, sys

line = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")][-1]
r = json.loads(line)
print(f"""
best: {r['model']} {r['best_config']}
  val video top-1 {r['metrics']['val_video_top1']:.3f}, {r['metrics']['gmacs']:.2f} GMACs/clip
report:      {r['report']}
dashboard:   http://127.0.0.1:8265  (Jobs page: this job's logs)
study:       optuna-dashboard {r['study']}
tensorboard: tensorboard --logdir {r['tensorboard']}
""")
PY
