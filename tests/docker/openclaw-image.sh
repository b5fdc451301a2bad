#!/bin/sh
# Builds a container image of the OpenClaw gateway without a registry:
# a Debian base made with debootstrap, plus an existing install of Node.js 24
# and openclaw from the npm registry. Does nothing when the image exists.
#
# Usage: tests/docker/openclaw-image.sh IMAGE OPENCLAW_DIR
#   IMAGE         name to give the image, such as agentstead/openclaw:2026.9.6
#   OPENCLAW_DIR  directory whose node_modules contains node@24 and openclaw
#
# DOCKER_HOST names the engine. The image runs as uid 1000 with
# OPENCLAW_DIR/node_modules/.bin on its PATH and has no entrypoint, so the
# agent-type plugin's arguments (`openclaw gateway ...`) are its command.
set -eu

image=$1
openclaw_dir=$2
base=agentstead/debian:bookworm-minbase

if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
if [ ! -x "$openclaw_dir/node_modules/.bin/openclaw" ]; then
    echo "no openclaw in $openclaw_dir/node_modules/.bin; install node@24 and openclaw there first" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! docker image inspect "$base" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 || { echo "install debootstrap first: apt-get install -y debootstrap" >&2; exit 1; }
    debootstrap --variant=minbase bookworm "$work/base" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    tar -C "$work/base" -c . | docker import - "$base" >/dev/null
    rm -rf "$work/base"
fi

# The base's files, the install under /opt/openclaw, and a user `node`
# with uid 1000 whose home contains the workspace mount point.
mkdir "$work/root"
container=$(docker create "$base" /bin/true)
docker export "$container" | tar -C "$work/root" -x
docker rm "$container" >/dev/null
cp -a "$openclaw_dir" "$work/root/opt/openclaw"
echo "node:x:1000:1000::/home/node:/bin/sh" >>"$work/root/etc/passwd"
echo "node:x:1000:" >>"$work/root/etc/group"
mkdir -p "$work/root/home/node/.openclaw"
chown -R 1000:1000 "$work/root/home/node"
tar -C "$work/root" -c . | docker import \
    --change 'USER 1000' \
    --change 'WORKDIR /home/node' \
    --change 'ENV PATH=/opt/openclaw/node_modules/.bin:/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV HOME=/home/node' \
    - "$image" >/dev/null
echo "built $image"
