#!/usr/bin/env bash
# Benchmark: wall time of one start-until-ready + teardown cycle of the Redis
# lab, alternating three ways on the same image and machine:
#   infralab   `infralab up distributed-locking` + `infralab down …`
#   compose    `docker-compose -f compose/redis.yaml up -d`, poll the container's
#              health status until healthy (healthcheck interval 1s), `down -t 1`
#   floor      `docker run -d -p 127.0.0.1::6379 IMAGE`, PING until PONG, `docker rm -f`
# Usage: tests/bench/up-down.sh [ROUNDS]   (needs redis-cli, docker-compose, a release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-10}
bin=./target/release/infralab
[ -x "$bin" ] || cargo build --release
image=$("$bin" images build redis | awk '{print $2}')
export INFRALAB_REDIS_IMAGE=$image
compose=$(command -v docker-compose || echo "docker compose")

now() { date +%s.%N; }
declare -A total; declare -A up_total
for k in infralab compose floor; do total[$k]=0; up_total[$k]=0; done
add() { total[$1]=$(echo "${total[$1]} + $2" | bc -l); up_total[$1]=$(echo "${up_total[$1]} + $3" | bc -l); }

cycle_infralab() {
  local t0 t1 t2; t0=$(now)
  "$bin" up distributed-locking >/dev/null 2>&1; t1=$(now)
  "$bin" down distributed-locking >/dev/null 2>&1; t2=$(now)
  add infralab "$(echo "$t2 - $t0" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
}
cycle_compose() {
  local t0 t1 t2 id; t0=$(now)
  $compose -p infralab-bench -f compose/redis.yaml up -d >/dev/null 2>&1
  id=$($compose -p infralab-bench -f compose/redis.yaml ps -q redis)
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do sleep 0.05; done; t1=$(now)
  $compose -p infralab-bench -f compose/redis.yaml down -t 1 >/dev/null 2>&1; t2=$(now)
  add compose "$(echo "$t2 - $t0" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
}
cycle_floor() {
  local t0 t1 t2 id port; t0=$(now)
  id=$(docker run -d -p 127.0.0.1::6379 "$image")
  port=$(docker port "$id" 6379/tcp | head -1 | awk -F: '{print $NF}')
  until [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ]; do sleep 0.01; done; t1=$(now)
  docker rm -f "$id" >/dev/null; t2=$(now)
  add floor "$(echo "$t2 - $t0" | bc -l)" "$(echo "$t1 - $t0" | bc -l)"
}

cycle_infralab; cycle_compose; cycle_floor   # warm-up, not counted
for k in infralab compose floor; do total[$k]=0; up_total[$k]=0; done
for _ in $(seq "$rounds"); do cycle_infralab; cycle_compose; cycle_floor; done

printf '%-9s %10s %10s %10s   (mean of %d alternating rounds, image %s)\n' way ready_s cycle_s vs_compose "$rounds" "$image"
for k in infralab compose floor; do
  printf '%-9s %10.3f %10.3f %9.2fx\n' "$k" "$(echo "${up_total[$k]} / $rounds" | bc -l)" \
    "$(echo "${total[$k]} / $rounds" | bc -l)" "$(echo "${total[$k]} / ${total[compose]}" | bc -l)"
done
