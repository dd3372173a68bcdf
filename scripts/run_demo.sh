#!/usr/bin/env bash
# The main job end to end on the embedded default: a local Ray head with token auth (started
# if none is running), then `ray job submit -- python jobs/tune_t3d.py`, which generates and
# ingests the demo set and runs a CPU-sized architecture search, then writes its report.
# Arguments go to the job (make demo SEED=3: --seed 3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"  # `ray`, and the job's `python`, are the project's
export RAY_AUTH_MODE=token          # token auth: the cluster's only lock
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265
ROOT=${RAYLAB_DEMO_DIR:-$PWD/.demo}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)

[ -f ~/.ray/auth_token ] || ray get-auth-token --generate >/dev/null
# The head this script starts listens on Ray's default port; ask that one, not whichever
# cluster Ray last recorded as current on this machine.
if ray status --address 127.0.0.1:6379 >/dev/null 2>&1; then
  echo "using the running Ray cluster"
else
  # The node's settings as a job's own Ray gets them (raylab.jobs.ray_node_environment).
  eval "$(python -c 'import os; from raylab.jobs import ray_node_environment as e; e(); print("export RAY_num_workers_soft_limit=" + os.environ["RAY_num_workers_soft_limit"])')"
  ray start --head --dashboard-host=127.0.0.1 --disable-usage-stats >/dev/null
  echo "started a local Ray head (stop it with: ray stop)"
fi

LOG="$ROOT/last-job.log"
JOB="raylab-demo-$(date +%Y%m%d-%H%M%S)"
# Submits the working directory (.gitignore'd paths such as .demo/ stay behind), then
# follows the job's own output; the submission's Ray messages go to a file.
# A head just started answers before its job agent is up, refusing submissions until then.
for attempt in $(seq 30); do
  if ray job submit --no-wait --submission-id "$JOB" --working-dir . \
    -- python jobs/tune_t3d.py --root "$ROOT" "$@" >"$ROOT/last-submit.log" 2>&1; then
    break
  fi
  grep -q "No available agent" "$ROOT/last-submit.log" && [ "$attempt" -lt 30 ] \
    || { cat "$ROOT/last-submit.log"; exit 1; }
  sleep 2
done
echo "submitted job $JOB (ray job logs $JOB; ray job stop $JOB)"
# Interrupted here, the job would go on running on the head and hold its CPUs: stop it too.
trap 'echo "stopping job $JOB"; ray job stop "$JOB" >/dev/null 2>&1; exit 130' INT TERM
# Following the logs ends with the job's final status ("Job '...' succeeded"); asking
# again (`ray job status`) would only cost another CLI start.
ray job logs --follow "$JOB" | tee "$LOG"
if ! grep -q "Job '$JOB' succeeded" "$LOG"; then
  echo "job $JOB did not succeed: $(ray job status "$JOB" 2>&1 | tail -1)" >&2
  exit 1
fi

python - "$LOG" <<'PY'
import json, sys

line = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")][-1]
r = json.loads(line)
top1, chance = r["metrics"]["val_video_top1"], 1 / r["num_classes"]
t = r["trials"]
verdict = "" if top1 > 1.5 * chance else "  -- at chance level: no network learned"
print(f"""
seed {r['seed']}, best: {r['model']} {r['best_config']}
  val video top-1 {top1:.3f} (chance {chance:.3f}){verdict}, {r['metrics']['gmacs']:.2f} GMACs/clip
trials: {t['total']} ({t['done']} done, {t['stopped']} stopped early, {t['pruned']} pruned, {t['error']} failed)
report:      {r['report']}
dashboard:   http://127.0.0.1:8265  (Jobs page: this job's logs)
study:       optuna-dashboard {r['study']}
tensorboard: tensorboard --logdir {r['tensorboard']}
Ray's logs:  {r['logs']['driver']} and {r['logs']['ray_session']}
""")
PY
