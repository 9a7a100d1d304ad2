#!/bin/sh
# The swarm benchmark in network namespaces: Damselfly vs aria2c (BitTorrent) vs direct HTTP.
# Run as root from anywhere; arguments go to `python -m benchmarks.swarm` (see its --help).
#   benchmarks/swarm.sh                       # N=8,16 × RTT 0,20ms, 100 MiB, results in
#                                             # benchmarks/results/swarm/
#   benchmarks/swarm.sh --docs --quiet-wait 300   # and write docs/benchmarks.md + docs/img
#   benchmarks/swarm.sh --cleanup             # remove namespaces left by a killed run
# Needs: iproute2 (ip, tc), curl, aria2, opentracker, util-linux (setpriv); iptables for --rtt;
# matplotlib (pip) for the plot.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "swarm.sh: run as root (it builds network namespaces and shapes links with tc)" >&2
    exit 2
fi
exec "${PYTHON:-python3}" -m benchmarks.swarm "$@"
