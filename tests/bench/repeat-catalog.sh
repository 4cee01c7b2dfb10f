#!/usr/bin/env bash
# Benchmark: are the catalog's verdicts steady? Runs the labs with
# `--repeat N --format json` twice, once on a quiet machine and once beside two
# busy CPU loops, then prints lab × flaky expectations × wall time from the
# JSON reports. Target: 0 flaky expectations in both columns.
#
# Usage: tests/bench/repeat-catalog.sh [LAB…]
#   N=20        repeats per scenario (default 20)
#   LABS="a b"  only these labs (names, stems or paths; arguments do the same);
#               default: the whole catalog (`run --all`)
#   BIN=…       the infralab binary (default: a release build, built if needed)
#   OUT=dir     where the JSON reports go (default: a temp folder, kept)
#   JOBS=n      labs run in parallel (`run --jobs n`; default 1)
#   PHASES="quiet busy"  which phases to run (a phase already in OUT is reused,
#               so the two can run at different times into the same OUT)
# Example smoke test: N=2 BIN=./target/debug/infralab tests/bench/repeat-catalog.sh distributed-locking
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${N:-20}
jobs=${JOBS:-1}
phases=${PHASES:-quiet busy}
labs=${*:-${LABS:-}}
bin=${BIN:-./target/release/infralab}
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; fi
out=${OUT:-$(mktemp -d -t repeat-catalog.XXXXXX)}
mkdir -p "$out"

busy_pids=()
stop_busy() {
  for p in "${busy_pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  busy_pids=()
}
trap stop_busy EXIT INT TERM

# One phase: every lab --repeat N into $out/PHASE.json (exit 1 = some check
# failed or was flaky; the table says which).
phase() {
  local name=$1 target
  if [ -n "$labs" ]; then target=$labs; else target=--all; fi
  echo "== $name: run $target --repeat $n" >&2
  # shellcheck disable=SC2086
  "$bin" --color never run $target --repeat "$n" --jobs "$jobs" --format json \
    --json "$out/$name.json" >/dev/null 2>"$out/$name.log" || true
}

case " $phases " in *" quiet "*) phase quiet ;; esac
case " $phases " in *" busy "*)
  for _ in 1 2; do sh -c 'while :; do :; done' & busy_pids+=($!); done
  phase busy
  stop_busy ;;
esac

python3 - "$out" "$n" <<'PY'
import json, sys, os
out, n = sys.argv[1], sys.argv[2]
phases = {}
for name in ("quiet", "busy"):
    path = os.path.join(out, name + ".json")
    try:
        phases[name] = json.load(open(path))
    except (OSError, ValueError) as e:
        print(f"no report for {name} ({e}); see {out}/{name}.log", file=sys.stderr)
        phases[name] = {"labs": []}

def by_lab(report):
    rows = {}
    for lab in report["labs"]:
        flaky = [
            f'{s["name"]}/{t["observation"]} {t["passed"]}/{t["runs"]}'
            for s in lab["scenarios"]
            for t in (s.get("repeats") or {}).get("expectations", [])
            if t["flaky"]
        ]
        rows[lab["name"]] = (lab["verdict"], flaky, lab["duration_ms"] / 1000, lab.get("error"))
    return rows

quiet, busy = by_lab(phases["quiet"]), by_lab(phases["busy"])
names = list(dict.fromkeys(list(quiet) + list(busy)))
w = max([len(x) for x in names] + [3])
print(f"--repeat {n}: flaky expectations and wall time per lab (reports in {out})")
print(f'{"lab":<{w}}  {"quiet":>5} {"wall":>8}  {"busy":>5} {"wall":>8}  verdicts (quiet/busy)')
total = {"quiet": [0, 0.0], "busy": [0, 0.0]}
details = []
for lab in names:
    cells = []
    for phase, rows in (("quiet", quiet), ("busy", busy)):
        verdict, flaky, wall, error = rows.get(lab, ("-", [], 0.0, None))
        total[phase][0] += len(flaky)
        total[phase][1] += wall
        cells.append((verdict, flaky, wall, error))
        details += [f"  {phase:5} {lab}: {f}" for f in flaky]
        if error:
            details.append(f"  {phase:5} {lab}: error: {error.splitlines()[0]}")
    (qv, qf, qw, _), (bv, bf, bw, _) = cells
    print(f"{lab:<{w}}  {len(qf):>5} {qw:>7.1f}s  {len(bf):>5} {bw:>7.1f}s  {qv}/{bv}")
print(f'{"total":<{w}}  {total["quiet"][0]:>5} {total["quiet"][1]:>7.1f}s  {total["busy"][0]:>5} {total["busy"][1]:>7.1f}s')
if details:
    print("\nflaky expectations (scenario/observation passed/runs) and errors:")
    print("\n".join(details))
PY
