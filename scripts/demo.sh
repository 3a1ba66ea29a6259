#!/usr/bin/env bash
# The README's main job: a working container network, in throwaway
# namespaces only. Run as root: make demo
set -euo pipefail
cd "$(dirname "$0")/.."

say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\n\033[31mDEMO FAILED: %s\033[0m\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (it creates network namespaces)"

BIN=$PWD/bin
T=$(mktemp -d /tmp/plumb-demo.XXXXXX)
HOST=plumb-demo-host-$$
EXT=plumb-demo-ext-$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$HOST" 2>/dev/null || true
  ip netns del "$EXT" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM   # runs cleanup through the EXIT trap

# Everything plumb does happens inside $HOST, the demo's stand-in for a host.
inhost() { nsenter --net=/run/netns/"$HOST" "$@"; }
plumbv() { local verb=$1; shift; inhost "$BIN/plumb" "$verb" --cni-path "$BIN" --cache-dir "$T/cache" "$@"; }

say "Building the plugins and the plumb command"
make -s build
go build -o "$BIN/plumb" ./cmd/plumb
go build -o "$BIN/demohttp" ./scripts/demohttp

say "Making a throwaway host namespace ($HOST) and an external peer ($EXT) linked by a veth"
ip netns add "$HOST"
ip netns add "$EXT"
ip link add demo-uplink netns "$HOST" type veth peer name eth0 netns "$EXT"
inhost ip link set lo up
inhost ip addr add 203.0.113.1/24 dev demo-uplink
inhost ip link set demo-uplink up
ip -n "$EXT" link set lo up
ip -n "$EXT" addr add 203.0.113.2/24 dev eth0
ip -n "$EXT" link set eth0 up
echo "host 203.0.113.1 <-> external 203.0.113.2 (the external side has no route to container subnets: only NAT gets answers)"

say "Loading the network from conf/10-plumb.conflist (state kept in $T)"
sed "s|\"type\": \"host-local\",|\"type\": \"host-local\", \"dataDir\": \"$T/data\",|" conf/10-plumb.conflist > "$T/plumb.conflist"
NET=$T/plumb.conflist
grep -q '"portmap"' "$NET" || fail "conf/10-plumb.conflist has no portmap plugin"

say "Starting container web: a web server on port 80, published on the host as 8080"
# nsenter execs plumb in place, so $! is plumb itself (a background job ignores SIGINT: stop it with SIGTERM)
nsenter --net=/run/netns/"$HOST" "$BIN/plumb" run --cni-path "$BIN" --cache-dir "$T/cache" --net "$NET" --name plumb-demo-web -p 8080:80 -- "$BIN/demohttp" serve :80 &
pids+=($!)
WEB=""
for _ in $(seq 50); do
  WEB=$(plumbv ls | awk '$4 ~ /plumb-demo-web/ {split($5, a, ","); split(a[1], b, "/"); print b[1]}')
  [ -n "$WEB" ] && break
  sleep 0.1
done
[ -n "$WEB" ] || fail "container web did not come up"
sleep 0.3
echo "web is at $WEB"

say "Container client reaches web through the bridge ($WEB:80)"
plumbv run --net "$NET" --name plumb-demo-client -- "$BIN/demohttp" get "http://$WEB:80/" || fail "bridge path"

say "Container client reaches web through the host's published port (203.0.113.1:8080)"
plumbv run --net "$NET" --name plumb-demo-client -- "$BIN/demohttp" get "http://203.0.113.1:8080/" || fail "published port from a container"

say "The external peer reaches web through the published port (203.0.113.1:8080)"
ip netns exec "$EXT" "$BIN/demohttp" get "http://203.0.113.1:8080/" || fail "published port from outside"

say "Container client reaches a server on the external peer through NAT: the server sees the host's address"
ip netns exec "$EXT" "$BIN/demohttp" serve 203.0.113.2:9000 &
pids+=($!)
sleep 0.3
out=$(plumbv run --net "$NET" --name plumb-demo-client -- "$BIN/demohttp" get "http://203.0.113.2:9000/") || fail "NAT path"
echo "$out"
case "$out" in *"came from 203.0.113.1"*) ;; *) fail "the external server did not see the host's address";; esac

say "What plumb created for the network (plumb inspect)"
plumbv inspect "$NET"

say "Stopping web: plumb detaches it and removes its namespace"
kill -TERM "${pids[0]}"
wait "${pids[0]}" || true
pids=("${pids[@]:1}")

say "Nothing is left"
left=$(plumbv inspect --json "$NET")
echo "$left"
echo "$left" | grep -q '"owners": \[\]' || fail "plumb inspect still lists attachments"
[ -z "$(plumbv ls | tail -n +2)" ] || fail "plumb ls still lists attachments"
inhost nft list ruleset | grep -q "203.0.113\|10.89" && fail "rules naming container addresses remain"
ls /run/netns | grep -q '^plumb-demo-\(web\|client\)' && fail "container namespaces remain"
echo "no attachments, no reservations, no rules, no container namespaces"
say "Demo done: removing the throwaway host and external namespaces"
