#!/bin/sh
# An emulated link for benchmarks: the root namespace (10.77.0.1) and a
# network namespace NAME (10.77.0.2) joined by a veth pair, rate-limited by
# tbf in both directions (netem is not available on these machines).
#
#   scripts/bench-netns.sh up NAME RATE_MBIT
#   scripts/bench-netns.sh down NAME
set -eu

cmd=${1:?usage: $0 up|down NAME [RATE_MBIT]}
name=${2:?namespace name}
host_if="${name}-h"
ns_if="${name}-n"

case "$cmd" in
up)
	rate=${3:-1000}
	# A burst of 2 ms at the rate (at least 64 KiB) keeps tbf accurate
	# without starving TCP; 10 ms of queue.
	burst=$((rate * 1000000 / 8 / 500))
	[ "$burst" -lt 65536 ] && burst=65536
	"$0" down "$name" 2>/dev/null || true
	ip netns add "$name"
	ip link add "$host_if" type veth peer name "$ns_if"
	ip link set "$ns_if" netns "$name"
	ip addr add 10.77.0.1/24 dev "$host_if"
	ip link set "$host_if" up
	ip netns exec "$name" ip addr add 10.77.0.2/24 dev "$ns_if"
	ip netns exec "$name" ip link set "$ns_if" up
	ip netns exec "$name" ip link set lo up
	tc qdisc add dev "$host_if" root tbf rate "${rate}mbit" burst "$burst" latency 10ms
	ip netns exec "$name" tc qdisc add dev "$ns_if" root tbf rate "${rate}mbit" \
		burst "$burst" latency 10ms
	;;
down)
	ip link del "$host_if" 2>/dev/null || true
	ip netns del "$name" 2>/dev/null || true
	;;
*)
	echo "usage: $0 up|down NAME [RATE_MBIT]" >&2
	exit 2
	;;
esac
