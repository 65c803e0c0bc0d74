#!/usr/bin/env bash
# `mtopt train` as a Ray job on a two-node Ray cluster started on this one machine:
# a head node (1 CPU) and a second node (2 CPUs, custom resource `robot_node`).
#   bash experiments/two_node_cluster.sh [extra --config.* overrides]
# Both nodes get their own dashboard-agent ports (two raylets share one IP here).
# Ray >= 2.5x authenticates with a token (~/.ray/auth_token): every command uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
RAY=.venv/bin/ray
IP=$(.venv/bin/python -c "import ray._private.services as s; print(s.get_node_ip_address())")
before=$(ls /tmp/ray 2>/dev/null | grep '^session_2' || true)
$RAY start --head --port=6390 --num-cpus=1 --include-dashboard=true --dashboard-host=127.0.0.1 \
  --dashboard-port=8266 --dashboard-agent-listen-port=52410 --dashboard-agent-grpc-port=52411 \
  --resources='{"head_node": 1}'
session=$(comm -13 <(echo "$before") <(ls /tmp/ray | grep '^session_2') | head -1)
cleanup() {  # Stop this cluster only (`ray stop` would stop every Ray on the machine).
  pkill -9 -f "$session" || true
  pkill -9 -f "dashboard.py --host=127.0.0.1 --port=8266" || true
  grep -qs ":6390" /tmp/ray/ray_current_cluster && rm -f /tmp/ray/ray_current_cluster
}
trap cleanup EXIT
$RAY start --address="$IP:6390" --num-cpus=2 --dashboard-agent-listen-port=52420 \
  --dashboard-agent-grpc-port=52421 --resources='{"robot_node": 2}'
sleep 10  # The job agent needs a moment after start.
export RAY_ADDRESS=http://127.0.0.1:8266
$RAY status --address="$IP:6390" | sed -n '/Active/,/Pending/p'
# MTOPT_JOB replaces the job's command (e.g. `.venv/bin/python -m benchmarks.pipeline ...`).
JOB=${MTOPT_JOB:-".venv/bin/mtopt train \
  --config configs/tabletop_state.py --config.run_dir=runs/cluster_demo \
  --config.train.labels=ground_truth --config.train.offline_episodes=60 \
  --config.learner.num_steps=400 --config.train.eval_every=200 \
  --config.eval.episodes_per_task=2 --config.replay.min_size=2 $*"}
$RAY job submit --submission-id "mtopt-$(date +%s)" -- bash -c "cd $PWD && $JOB"
.venv/bin/python - <<'PY'
import collections
from ray.util.state import list_actors, list_nodes
nodes = {n.node_id: ("head" if n.is_head_node else "second node")
         for n in list_nodes(address="http://127.0.0.1:8266")}
where = collections.Counter((str(a.class_name), nodes.get(a.node_id, "unplaced"))
                            for a in list_actors(address="http://127.0.0.1:8266", limit=1000,
                                                 detail=True))
for (cls, node), n in sorted(where.items()):
  print(f"{cls:18s} {node:12s} {n}")
PY
