#!/usr/bin/env bash
# The main job end to end on the embedded default: demo videos -> shards -> one epoch of clips.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=${RAYLAB_DEMO_DIR:-.demo}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # a local, private Ray started by the job itself
[ -f "$WORK/videos/classInd.txt" ] || $PY jobs/make_demo_data.py --out "$WORK/videos"
$PY jobs/ingest.py --source "$WORK/videos" --format ucf101 --out "$WORK/shards" --short-side 128
$PY jobs/stream_clips.py --data "$WORK/shards" --split train --frames 16 --size 112
