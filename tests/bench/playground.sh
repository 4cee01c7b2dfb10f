#!/usr/bin/env bash
# Benchmark: the whole stack (every kind) from nothing to all-ready, with images
# present, alternating:
#   infralab   `infralab up playground` (prints each service's ready time) + `down`
#   compose    every compose/KIND.yaml in one project with the same local images,
#              `up -d`, poll each container's health until all are healthy, `down -t 1`
# Usage: tests/bench/playground.sh [ROUNDS]   (needs docker-compose and a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
bin=./target/release/infralab
[ -x "$bin" ] || cargo build --release
kinds="redis postgres rabbitmq kafka mosquitto nginx agent"
files=()
for k in $kinds; do
  tag=$("$bin" images build "$k" | awk '{print $2}')
  export "INFRALAB_$(echo "$k" | tr a-z A-Z)_IMAGE=$tag"
  files+=(-f "compose/$k.yaml")
done
export INFRALAB_KAFKA_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
compose=$(command -v docker-compose || echo "docker compose")
now() { date +%s.%N; }

for i in $(seq "$rounds"); do
  t0=$(now)
  out=$("$bin" --color never up playground 2>&1)
  t1=$(now)
  "$bin" down playground >/dev/null 2>&1
  t2=$(now)
  echo "round $i infralab: all ready $(echo "$t1 - $t0" | bc -l | cut -c1-5) s, down $(echo "$t2 - $t1" | bc -l | cut -c1-5) s"
  echo "$out" | grep -E 'ready in' | sed 's/^/    /'

  t0=$(now)
  $compose -p infralab-bench "${files[@]}" up -d >/dev/null 2>&1
  ids=$($compose -p infralab-bench "${files[@]}" ps -q)
  while true; do
    states=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids | sort -u | tr '\n' ' ')
    [ "$states" = "healthy " ] && break
    sleep 0.1
  done
  t1=$(now)
  $compose -p infralab-bench "${files[@]}" down -t 1 >/dev/null 2>&1
  t2=$(now)
  echo "round $i compose:  all healthy $(echo "$t1 - $t0" | bc -l | cut -c1-5) s, down $(echo "$t2 - $t1" | bc -l | cut -c1-5) s"
done
