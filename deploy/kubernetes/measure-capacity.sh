#!/usr/bin/env bash
# The capacity of one API pod as the manifests size it: one uvicorn worker on one CPU.
# The server is pinned to CPU 0 (taskset) and wrk to CPU 1, so the load generator never
# takes the pod's core; single-image JSON requests (a real test digit), the project's wrk
# script (bench/post.lua: non-200 answers are counted, never passed off as throughput).
# Prints req/s and latency per concurrency and run, and the mean queue wait per image
# (from the service's own mnist_queue_wait_seconds histogram) per concurrency level.
#
#   deploy/kubernetes/measure-capacity.sh REPOSITORY     # a DIR/mnist/<version>/model.onnx
#   RUNS=5 DURATION=10 CONCURRENCY="1 8 32" deploy/kubernetes/measure-capacity.sh REPOSITORY
#
# Needs: 2 CPUs or more, wrk (apt-get install wrk), the project's venv (uv sync).
set -euo pipefail
cd "$(dirname "$0")/../.."
repository=${1:?usage: $0 MODEL_REPOSITORY}
port=${PORT:-18090}
work=$(mktemp -d)

.venv/bin/python - "$work/one.json" <<'EOF'
import sys
from bench.payloads import json_payload, load_test_digits, offline_data_dir
digits = load_test_digits(offline_data_dir())
open(sys.argv[1], "wb").write(json_payload(digits.images[0], int(digits.labels[0])).body)
EOF

MNIST_MODEL_REPOSITORY="$repository" MNIST_WORKERS=1 MNIST_INTRA_OP_THREADS=1 MNIST_DEVICE=cpu \
  MNIST_HOST=127.0.0.1 MNIST_PORT="$port" MNIST_LOG_LEVEL=warning \
  taskset -c 0 .venv/bin/mnist-serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 120); do curl -sf "127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.5; done
curl -sf "127.0.0.1:$port/health/ready" >/dev/null || { cat "$work/server.log"; exit 1; }

load() {  # concurrency seconds -> one WRK_JSON line
  taskset -c 1 wrk -t1 -c"$1" -d"$2"s -s bench/post.lua "http://127.0.0.1:$port/predict" \
    -- "$work/one.json" application/json | grep WRK_JSON
}
queue_wait() {  # sum and count of the queue-wait histogram, all versions added up
  curl -s "127.0.0.1:$port/metrics" | awk '/^mnist_queue_wait_seconds_sum/ {s += $2}
    /^mnist_queue_wait_seconds_count/ {c += $2} END {printf "%s %s\n", s, c}'
}

load 32 5 >/dev/null  # warm-up
for c in ${CONCURRENCY:-1 4 8 16 32 64}; do
  read -r sum0 count0 < <(queue_wait)
  for run in $(seq "${RUNS:-3}"); do
    load "$c" "${DURATION:-10}" | python3 -c '
import json, sys
c, run = sys.argv[1:]
d = json.loads(sys.stdin.read().split(" ", 1)[1])
l = d["latency_us"]
print("c=%s run=%s req/s %.0f p50 %.2f ms p99 %.2f ms non-200 %d"
      % (c, run, d["requests_per_s"], l["p50"] / 1e3, l["p99"] / 1e3, d["non_200"]))' "$c" "$run"
  done
  read -r sum1 count1 < <(queue_wait)
  python3 -c "import sys; s0, c0, s1, c1 = map(float, sys.argv[1:]); \
print(f'c=$c mean queue wait {(s1 - s0) / max(c1 - c0, 1) * 1e3:.2f} ms per image')" \
    "$sum0" "$count0" "$sum1" "$count1"
done
echo "server RSS: $(ps -o rss= -p "$server") KiB; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
