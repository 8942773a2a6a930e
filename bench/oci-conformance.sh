#!/usr/bin/env bash
# The OCI project's conformance suite (opencontainers/runtime-tools, validation/)
# against an OCI runtime, one TAP file per test program, scored per file.
#
#   bench/oci-conformance.sh [-o RESULTS_DIR] [-c BASELINE.tsv] RUNTIME_TOOLS_DIR [TEST...]
#
#   RUNTIME_TOOLS_DIR  a runtime-tools tree whose validation programs are built:
#                      validation/<t>/<t>.t, ./runtimetest and ./rootfs-amd64.tar.gz
#                      (also $RT_DIR). This repository holds no runtime-tools code
#                      and no recipe that builds it (the workplace's rule for fetched
#                      code); build it as its README says, offline: it vendors its Go
#                      modules, and Debian bookworm-backports has golang-1.21-go.
#   RUNTIME            $RUNTIME, default mydocker-runc (the .venv's if not on PATH)
#   -o DIR             where the TAP files and summary.tsv go (default: a temporary
#                      directory, printed)
#   -c FILE            a summary.tsv of another runtime (e.g. runc's): a column with
#                      its result, and the files it passes that this one does not
#   TEST               test names (default: all of validation/)
#
# Each program runs as the suite means it (from the tree, RUNTIME in its
# environment), in a session and a private mount namespace of its own (unshare -m
# --propagation private: what a test mounts stays there), with a timeout of 120 s
# and a TMPDIR of its own. After each, what it left is removed: its processes,
# containers whose bundle is in its TMPDIR (kill KILL, delete --force), the
# suite's fixed cgroup names (cgrouptest, testdir) that were not there before, its
# TMPDIR. As root. Takes about 5 minutes for the 58 files on 2 cores.
#
# A file passes completely when the program exits 0 with every planned assertion
# "ok" ("PASS"), or plans none and reports no error ("PASS(1..0)"), or prints
# nothing at all, as process_rlimits_fail and process_capabilities_fail do when
# the runtime rightly refuses ("PASS(silent)").
set -u -o pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out="" baseline=""
while getopts "o:c:h" opt; do
    case $opt in
        o) out=$OPTARG ;;
        c) baseline=$OPTARG ;;
        *) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
RT_DIR=${1:-${RT_DIR:-}}
[ -n "$RT_DIR" ] || { echo "usage: $0 [-o DIR] [-c BASELINE.tsv] RUNTIME_TOOLS_DIR [TEST...]" >&2; exit 2; }
shift || true
RT_DIR=$(cd "$RT_DIR" && pwd) || exit 2
RUNTIME=${RUNTIME:-$(command -v mydocker-runc || echo "$here/.venv/bin/mydocker-runc")}
case $RUNTIME in */*) ;; *) RUNTIME=$(command -v "$RUNTIME") || { echo "no runtime $RUNTIME" >&2; exit 2; } ;; esac
[ -x "$RUNTIME" ] || { echo "$0: $RUNTIME is not executable" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root" >&2; exit 2; }
for f in runtimetest rootfs-amd64.tar.gz; do
    [ -e "$RT_DIR/$f" ] || { echo "$0: $RT_DIR/$f is missing: build runtime-tools' validation programs first" >&2; exit 2; }
done
if [ $# -gt 0 ]; then tests=("$@"); else
    mapfile -t tests < <(cd "$RT_DIR/validation" && for d in */; do d=${d%/}; [ -x "$d/$d.t" ] && echo "$d"; done)
fi
[ ${#tests[@]} -gt 0 ] || { echo "$0: no built test program in $RT_DIR/validation" >&2; exit 2; }
[ -n "$out" ] || out=$(mktemp -d /tmp/oci-conformance.XXXXXX)
mkdir -p "$out"
scratch=$(mktemp -d /tmp/oci-conformance-run.XXXXXX)
chmod 755 "$scratch"  # bundles under it must be reachable by user-namespaced containers
trap 'rm -rf --one-file-system "$scratch"' EXIT

cgroup_names() { find /sys/fs/cgroup/ -mindepth 2 -type d \( -name cgrouptest -o -name testdir \) 2>/dev/null | sort; }

clean_up() { # $1 the test's TMPDIR, $2 its session id, $3 cgroup dirs before
    local tdir=$1 sid=$2 before=$3 pid id d
    for _ in 1 2 3; do  # the test's session: runtimes, hooks, its helper processes
        local left=""
        for pid in $(ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'); do
            [ "$pid" = $$ ] || { kill -9 "$pid" 2>/dev/null; left=1; }
        done
        [ -z "$left" ] && break
        sleep 0.2
    done
    "$RUNTIME" list -f json 2>/dev/null | python3 -c '
import json, sys
tdir = sys.argv[1]
for c in json.load(sys.stdin) or []:
    if (c.get("bundle") or "").startswith(tdir + "/"):
        print(c["id"])' "$tdir" | while read -r id; do
        "$RUNTIME" kill "$id" KILL >/dev/null 2>&1
        timeout 30 "$RUNTIME" delete --force "$id" >/dev/null 2>&1 || echo "  [cleanup] delete $id failed" >&2
    done
    for d in $(comm -13 "$before" <(cgroup_names) | sort -r); do
        for pid in $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        for _ in 1 2 3 4 5; do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; [ -d "$d" ] || break; sleep 0.2; done
    done
    rm -rf --one-file-system "$tdir"
}

score() { # $1 TAP file, $2 exit status -> "ok not_ok plan result"
    local tap=$1 rc=$2 ok nok plan result
    ok=$(grep -c '^ok' "$tap"); nok=$(grep -c '^not ok' "$tap")
    plan=$(grep -oE '^1\.\.[0-9]+' "$tap" | cut -d. -f3 | awk '{s += $1} END {if (NR) print s}')
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then result="FAIL(timeout)"
    elif [ "$rc" != 0 ]; then result="FAIL(exit $rc)"
    elif [ -z "$plan" ] && [ ! -s "$tap" ]; then result="PASS(silent)"
    elif [ -z "$plan" ]; then result="FAIL(no plan)"
    elif [ "$nok" -gt 0 ]; then result=FAIL
    elif [ $((ok + nok)) != "$plan" ]; then result="FAIL(plan $plan, ran $((ok + nok)))"
    elif [ "$plan" = 0 ] && grep -qE '^ *"error": "[^"]' "$tap"; then result="FAIL(1..0+diag)"
    elif [ "$plan" = 0 ]; then result="PASS(1..0)"
    else result=PASS
    fi
    echo "$ok $nok ${plan:--} $result"
}

echo "# runtime: $RUNTIME ($("$RUNTIME" --version 2>/dev/null | head -1))"
echo "# suite:   $RT_DIR ($(git -C "$RT_DIR" describe --always --tags 2>/dev/null || echo '?'))"
echo "# results: $out"
printf 'test\tok\tnot_ok\tplan\trc\tsecs\tresult\n' > "$out/summary.tsv"
printf '%-32s %5s %6s %5s %4s %6s  %-16s %s\n' TEST ok not_ok plan rc secs RESULT "${baseline:+BASELINE}"
passed=0 start=$(date +%s)
cd "$RT_DIR" || exit 2  # the programs want ./runtimetest and ./rootfs-amd64.tar.gz
for t in "${tests[@]}"; do
    tdir="$scratch/$t"; mkdir -p "$tdir"; chmod 1777 "$tdir"
    before="$scratch/.cgroups"; cgroup_names > "$before"
    t0=$(date +%s.%N)
    RUNTIME="$RUNTIME" TMPDIR="$tdir" setsid -w timeout -k 10 120 \
        unshare -m --propagation private "$RT_DIR/validation/$t/$t.t" \
        > "$out/$t.tap" 2> "$out/$t.stderr" < /dev/null &
    sid=$!  # not a group leader (no job control here): setsid made it its session's leader
    wait "$sid"; rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    clean_up "$tdir" "$sid" "$before" 2>> "$out/$t.stderr"
    read -r ok nok plan result <<< "$(score "$out/$t.tap" "$rc")"
    case $result in PASS*) passed=$((passed + 1)) ;; esac
    base=""
    [ -n "$baseline" ] && base=$(awk -F'\t' -v t="$t" '$1 == t {print $NF}' "$baseline")
    printf '%-32s %5s %6s %5s %4s %6s  %-16s %s\n' "$t" "$ok" "$nok" "$plan" "$rc" "$secs" "$result" "$base"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$ok" "$nok" "$plan" "$rc" "$secs" "$result" >> "$out/summary.tsv"
done
echo "# files passed completely: $passed/${#tests[@]} in $(( $(date +%s) - start )) s"
if [ -n "$baseline" ]; then
    missing=$(awk -F'\t' 'NR == FNR {if ($NF ~ /^PASS/) want[$1] = 1; next}
                          FNR > 1 && ($1 in want) && $NF !~ /^PASS/ {print $1}' "$baseline" "$out/summary.tsv")
    if [ -n "$missing" ]; then echo "# passed by the baseline, not here: $missing"
    else echo "# every file the baseline passes passes here"; fi
fi
[ "$passed" = "${#tests[@]}" ]
