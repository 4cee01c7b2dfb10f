#!/usr/bin/env bash
# Benchmark: the README's two commands on a "fresh machine" — a clean clone,
# an empty target folder, an empty infralab cache (so tansu is fetched or
# compiled again) and no infralab images — timed step by step:
#   build       cargo build --release (dependencies included)
#   test build  cargo test --release --no-run (the library again as unit tests, the examples)
#   images      infralab images build --all (mmdebstrap per kind; tansu prebuilt or compiled)
#   tests       the README's test command, built already
#
# It REMOVES every local infralab image (`infralab/*`) first: do not run it
# while labs run. Cargo's registry cache (~/.cargo/registry) is kept: crates
# are downloaded once per machine, as on any machine that has built Rust.
# Usage: tests/bench/fresh-machine.sh [--from-source]   (sets INFRALAB_FROM_SOURCE=1)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ "${1:-}" = "--from-source" ] && export INFRALAB_FROM_SOURCE=1

work=$(mktemp -d)
# Kept when a step fails, so its log can be read.
trap 'if [ "${status:-1}" = 0 ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi' EXIT
git clone -q "$repo" "$work/infralab"
cd "$work/infralab"
export XDG_CACHE_HOME="$work/cache" CARGO_TERM_COLOR=never NO_COLOR=1

docker images --format '{{.Repository}}:{{.Tag}}' | grep '^infralab/' | xargs -r docker rmi -f >/dev/null

now() { date +%s; }
t0=$(now)
cargo build --release --locked >"$work/build.log" 2>&1
t1=$(now)
cargo test --release --locked --no-run >"$work/test-build.log" 2>&1
t2=$(now)
./target/release/infralab images build --all >"$work/images.log" 2>&1
t3=$(now)
status=0
cargo test --release --locked -- --test-threads 4 >"$work/tests.log" 2>&1 || status=$?
t4=$(now)

grep -h "tansu" "$work/images.log" | tail -2 || true
tail -3 "$work/tests.log" || true
printf '\n%-11s %6s\n' step seconds
printf '%-11s %6d\n' build $((t1 - t0)) "test build" $((t2 - t1)) images $((t3 - t2)) \
  tests $((t4 - t3)) total $((t4 - t0))
exit $status
