#!/bin/bash
# Measures the public TypeScript reference (chuckjaz/invariant) with measure.sh, with
# the reference confined to a new network namespace that has only a loopback
# interface: it listens on every interface, and nothing outside the namespace can
# reach it there.
#
# usage: spec/conformance/reference.sh <reference checkout> [json directory]
#   The checkout must be built first: `npm install && npm run build` (dist/cli.js).
#   Prints the verdict table of reference.md on stdout; with a json directory, keeps
#   each JSON report there. Needs unshare (util-linux), ip (iproute2), node, jq and
#   the suite built (`cargo build -p invariant-conformance`).
#
# Before each run (role, profile) every reference service is stopped and started again
# on an empty data directory, so one run's crash or leftovers never decide another's.
# The services are one process each, `node dist/cli.js start <service>`, with HOME
# pointing at a temporary directory that holds the configuration below.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
services=(broker storage slots find names productions distribute files)
port_of() {
    local i
    for i in "${!services[@]}"; do
        [ "${services[$i]}" = "$1" ] && { echo $((4000 + i)); return; }
    done
    return 1
}

# Writes $HOME/.invariant/config.json: one server of each role on 127.0.0.1:4000-4007.
configure() {
    local entries=() service id port
    for service in "${services[@]}"; do
        id=$(printf 'reference %s' "$service" | sha256sum | cut -c1-64)
        port=$(port_of "$service")
        if [ "$service" = broker ]; then
            entries+=("{\"server\": \"broker\", \"id\": \"$id\", \"port\": $port, \"directory\": \"broker\", \"primary\": true}")
        else
            entries+=("{\"server\": \"$service\", \"id\": \"$id\", \"port\": $port, \"directory\": \"$service\", \"urls\": [\"http://127.0.0.1:$port\"]}")
        fi
        mkdir -p "$HOME/.invariant/$service"
    done
    local IFS=,
    printf '{"broker": "http://127.0.0.1:4000", "servers": [%s]}\n' "${entries[*]}" \
        >"$HOME/.invariant/config.json"
}

stop_all() {
    local pidfile
    for pidfile in "$STATE"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
    sleep 0.5
}

# Starts every service on an empty data directory; waits until each one listens.
fresh() {
    stop_all
    rm -rf "$HOME/.invariant"
    mkdir -p "$HOME/.invariant"
    configure
    local service port
    for service in "${services[@]}"; do
        port=$(port_of "$service")
        (cd "$REFERENCE" && exec node dist/cli.js start "$service") \
            >>"$STATE/$service.log" 2>&1 </dev/null &
        echo $! >"$STATE/$service.pid"
        for _ in $(seq 1 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
    done
    sleep 1
}

if [ "${1:-}" = --fresh ]; then
    # Called by measure.sh before each run, inside the namespace.
    fresh >&2
    exit 0
fi

[ "$#" -ge 1 ] || { echo "usage: $0 <reference checkout> [json directory]" >&2; exit 2; }
if [ -z "${REFERENCE_NAMESPACE:-}" ]; then
    reference=$(cd "$1" && pwd)
    [ -f "$reference/dist/cli.js" ] || { echo "build the reference first (npm run build)" >&2; exit 2; }
    json=""
    [ -n "${2:-}" ] && json=$(mkdir -p "$2" && cd "$2" && pwd)
    exec unshare -rn env REFERENCE_NAMESPACE=1 "$0" "$reference" "$json"
fi

# Inside the namespace: refuse to start anything if an interface other than loopback
# exists (then this is not the namespace unshare created).
if ip -o link show | grep -v ': lo:' | grep -q .; then
    echo "not in a loopback-only network namespace; refusing to start the reference" >&2
    exit 2
fi
ip link set lo up
export REFERENCE="$1"
HOME=$(mktemp -d)
STATE="$HOME/state"
export HOME STATE
mkdir -p "$STATE"
trap 'stop_all; rm -rf "$HOME"' EXIT

pairs=()
for service in "${services[@]}"; do
    pairs+=("$service=http://127.0.0.1:$(port_of "$service")")
done
MEASURE_BEFORE="$here/reference.sh --fresh" \
    MEASURE_FLAGS="--broker http://127.0.0.1:4000" \
    MEASURE_JSON="${2:-}" \
    "$here/measure.sh" "${pairs[@]}"
