#!/bin/sh
# Measures the conformance of running servers and prints the verdict tables of
# spec/conformance/reference.md (Markdown) on stdout.
#
# usage: spec/conformance/measure.sh role=url [role=url ...]
#   e.g. spec/conformance/measure.sh storage=http://127.0.0.1:4001 slots=http://127.0.0.1:4002
#
# Runs `invariant-conformance` (from target/debug, built with
# `cargo build -p invariant-conformance`, or $INVARIANT_CONFORMANCE) once per role and
# profile (core, full) with --json, and prints one line per role and profile with the
# counts and the failed checks with their first-cause group. Needs jq. Not part of the
# test command: the reference implementation is not installed in CI.
#
# Environment:
#   MEASURE_FLAGS   more flags for every run, e.g. "--broker http://127.0.0.1:4000" so
#                   the checks that need a second server can register the suite's
#                   fake peers where the servers under test look them up.
#   MEASURE_BEFORE  a command run as `$MEASURE_BEFORE <role> <profile> <url>` before
#                   each run, e.g. one that restarts the server: without it, a server
#                   that crashed during the core run makes the full run unreachable.
#   MEASURE_JSON    a directory where each JSON report is kept as <role>-<profile>.json.
set -eu

bin="${INVARIANT_CONFORMANCE:-$(dirname "$0")/../../target/debug/invariant-conformance}"
[ -x "$bin" ] || { echo "build it first: cargo build -p invariant-conformance" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 2; }
[ "$#" -gt 0 ] || { echo "usage: $0 role=url [role=url ...]" >&2; exit 2; }

err=$(mktemp)
trap 'rm -f "$err"' EXIT

echo "| role | profile | pass | fail | warn | skip | failed checks (first cause) |"
echo "|---|---|---|---|---|---|---|"
for pair in "$@"; do
    role="${pair%%=*}"
    url="${pair#*=}"
    for profile in core full; do
        if [ -n "${MEASURE_BEFORE:-}" ]; then
            $MEASURE_BEFORE "$role" "$profile" "$url" >&2 || {
                echo "| $role | $profile | — | — | — | — | error: \`$MEASURE_BEFORE\` failed |"
                continue
            }
        fi
        status=0
        # shellcheck disable=SC2086 # MEASURE_FLAGS is a list of words
        report=$("$bin" "$role" "$url" --profile "$profile" --json ${MEASURE_FLAGS:-} 2>"$err") \
            || status=$?
        if [ -n "${MEASURE_JSON:-}" ] && [ -n "$report" ]; then
            printf '%s\n' "$report" >"$MEASURE_JSON/$role-$profile.json"
        fi
        if [ "$status" -eq 2 ] && [ -z "$report" ]; then
            echo "| $role | $profile | — | — | — | — | error: $(head -1 "$err") |"
            continue
        fi
        printf '%s\n' "$report" | jq -r --arg role "$role" '
            "| \($role) | \(.profile) | \(.summary.pass) | \(.summary.fail) | \(.summary.warn) | \(.summary.skip) | "
            + ([.results[] | select(.status == "fail") | "`\(.check)` (\(.cause))"] | join(", "))
            + (if .aborted then " — aborted: \(.aborted)" else "" end)
            + " |"'
    done
done
