#!/usr/bin/env bash
# Fuzzes every server of this workspace with schemathesis against its OpenAPI
# description (spec/openapi/<role>.yaml): no 5xx, no crash, every answer's status,
# content type, headers and body as described, invalid input rejected with 4xx.
#
# Usage: spec/fuzz/run.sh [role...]   (default: every role with a finished server;
#        "files" runs files-server once it builds)
#
# Environment:
#   SCHEMATHESIS             the schemathesis command (default: schemathesis on PATH)
#   INVARIANT_FUZZ_PROFILE   debug (default) or release: which target/ binaries to run
#   CARGO_TARGET_DIR         where cargo puts them (default: target)
#   INVARIANT_FUZZ_BUILD     1 (default) builds the server binaries first; 0 does not
#   INVARIANT_FUZZ_EXAMPLES  test cases per operation and phase (default 30)
#   INVARIANT_FUZZ_SEED      a fixed seed (default 20240607) or "random"
#   INVARIANT_FUZZ_TIMEOUT   seconds one role's run may take (default 240)
#
# Every server listens on 127.0.0.1 with a fresh data directory and no broker, so the
# run sends nothing beyond this machine (the broker's liveness checks are pushed past
# the end of the run, since fuzzed registrations carry arbitrary urls). The slot watch
# route is left out: its answer is endless by design (the conformance suite checks it).
set -euo pipefail
cd "$(dirname "$0")/../.."

ST=${SCHEMATHESIS:-schemathesis}
PROFILE=${INVARIANT_FUZZ_PROFILE:-debug}
EXAMPLES=${INVARIANT_FUZZ_EXAMPLES:-30}
SEED=${INVARIANT_FUZZ_SEED:-20240607}
ROLE_TIMEOUT=${INVARIANT_FUZZ_TIMEOUT:-240}
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"

ALL_ROLES=(storage slots broker find names productions distributor files)
if [ "$#" -gt 0 ]; then ROLES=("$@"); else ROLES=("${ALL_ROLES[@]}"); fi

if ! command -v "$ST" >/dev/null 2>&1; then
  echo "schemathesis not found (set SCHEMATHESIS or pip install schemathesis==4.32.5)" >&2
  exit 2
fi
case "$ST" in */*) ST="$(cd "$(dirname "$ST")" && pwd)/$(basename "$ST")" ;; esac
ROOT=$(pwd)

declare -A PACKAGE=(
  [storage]=storage-server [slots]=slots-server [broker]=broker-server
  [find]=find-server [names]=names-server [productions]=productions-server
  [distributor]=distributor [files]=files-server
)
declare -A EXTRA=(
  [storage]="--max-blob-size 2097152"
  [broker]="--check-interval-ms 86400000 --check-jitter-ms 0"
)

if [ "${INVARIANT_FUZZ_BUILD:-1}" = 1 ]; then
  args=()
  for role in "${ROLES[@]}"; do args+=(-p "${PACKAGE[$role]}"); done
  # The files server is fuzzed with real storage and slots servers behind it.
  if [[ " ${ROLES[*]} " == *" files "* ]]; then args+=(-p storage-server -p slots-server); fi
  if [ "$PROFILE" = release ]; then args+=(--release); fi
  cargo build --quiet "${args[@]}"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start <role>: runs the role's binary on a free port; sets URL.
start() {
  local role=$1 binary="$BIN/${PACKAGE[$1]}"
  [ -x "$binary" ] || { echo "missing $binary (build it or set INVARIANT_FUZZ_BUILD=1)" >&2; return 1; }
  # shellcheck disable=SC2086
  "$binary" --listen 127.0.0.1:0 --data-dir "$WORK/$role" ${EXTRA[$role]:-} \
    >"$WORK/$role.out" 2>"$WORK/$role.log" &
  PIDS+=("$!")
  SERVER_PID=$!
  URL=
  for _ in $(seq 1 300); do
    URL=$(sed -n 's/^listening on //p' "$WORK/$role.out")
    [ -n "$URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$role did not start:" >&2
  cat "$WORK/$role.log" >&2
  return 1
}

# Backends for the files server: a storage and a slots server of their own, so that
# mounts reach real peers (without them a mount is a 503: no peer to read from).
if [[ " ${ROLES[*]} " == *" files "* ]]; then
  PACKAGE[files-storage]=storage-server
  PACKAGE[files-slots]=slots-server
  start files-storage
  files_storage=$URL
  start files-slots
  EXTRA[files]="--storage $files_storage --slots $URL"
fi

seed_args=()
if [ "$SEED" != random ]; then seed_args=(--seed "$SEED"); fi

failed=()
for role in "${ROLES[@]}"; do
  echo "== schemathesis: $role"
  start "$role"
  status=0
  # Run from the scratch folder: schemathesis keeps a cache in its working directory.
  (cd "$WORK" && timeout "$ROLE_TIMEOUT" "$ST" run "$ROOT/spec/openapi/$role.yaml" \
    --url "$URL" \
    --max-examples "$EXAMPLES" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
    --request-timeout 10 \
    --exclude-operation-id watchSlot \
    --workers 1 \
    --suppress-health-check all \
    --warnings off \
    --no-color \
    "${seed_args[@]}") || status=$?
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "$role server died during fuzzing:" >&2
    tail -n 50 "$WORK/$role.log" >&2
    status=1
  fi
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then failed+=("$role"); fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "schemathesis found problems in: ${failed[*]}" >&2
  exit 1
fi
echo "schemathesis: ${#ROLES[@]} passed, 0 failed"
