#!/bin/sh
# Measures the conformance of running servers and prints the verdict tables of
# spec/conformance/reference.md (Markdown) on stdout.
#
# usage: spec/conformance/measure.sh role=url [role=url ...]
#   e.g. spec/conformance/measure.sh storage=http://127.0.0.1:4001 slots=http://127.0.0.1:4002
#
# Runs `invariant-conformance` (from target/debug, built with
# `cargo build -p invariant-conformance`) once per role and profile (core, full) with
# --json, and prints one line per role and profile with the counts and the failed
# checks with their first-cause group. Needs jq. Not part of the test command: the
# reference implementation is not installed in CI.
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
        status=0
        report=$("$bin" "$role" "$url" --profile "$profile" --json 2>"$err") || status=$?
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
