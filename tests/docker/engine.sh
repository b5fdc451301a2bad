#!/bin/sh
# Starts a Docker Engine for the test suite unless one already responds on
# the test socket, then prints the endpoint to use.
#
# Usage: tests/docker/engine.sh [CACHE_DIR]
#
# The engine keeps its images under CACHE_DIR/docker, so images built for
# the tests (the OpenClaw image takes minutes) survive between runs. It runs
# without iptables rules; published ports go through the engine's userland
# proxy on the address the test requests.
set -eu

socket=/tmp/agentstead-docker.sock
cache=${1:-${AGENTSTEAD_CACHE:-$HOME/.cache/agentstead-ci}}

ping() {
    curl -fsS --max-time 2 --unix-socket "$socket" http://docker/_ping >/dev/null 2>&1
}

if ping; then
    echo "unix://$socket"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "dockerd is not installed; install it with: apt-get install -y docker.io" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "dockerd needs root; run this script as root or start an engine yourself and set AGENTSTEAD_DOCKER_HOST" >&2
    exit 1
fi

mkdir -p "$cache/docker"
nohup dockerd --host "unix://$socket" \
    --data-root "$cache/docker/data" \
    --exec-root /tmp/agentstead-docker-exec \
    --pidfile /tmp/agentstead-docker.pid \
    --iptables=false \
    >"$cache/docker/dockerd.log" 2>&1 &

tries=0
until ping; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ]; then
        echo "dockerd did not answer within 60 s; see $cache/docker/dockerd.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "unix://$socket"
