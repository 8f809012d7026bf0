#!/bin/sh
# Entrypoint of the node agent's container: check what `morpheus run` needs on this node,
# say what is missing in words an operator can act on, then exec the agent (PID 1 of the
# container, so SIGTERM reaches it: it stops cycling and leaves the specialized program
# attached and pinned, and the next pod adopts it).
#
# Environment:
#   MORPHEUS_IFACE         interface to attach to (required)
#   MORPHEUS_OBJECT        BPF object to run (e.g. from a ConfigMap volume), or
#   MORPHEUS_NF            a network function built into the package (router, lb, ...)
#   MORPHEUS_PROGRAM       program in the object (default: its only one)
#   MORPHEUS_NAME          agent name: pins under /sys/fs/bpf/morpheus/NAME, socket
#                          /run/morpheus/NAME.sock (default: morpheus-IFACE)
#   MORPHEUS_METRICS_PORT  Prometheus metrics on 127.0.0.1:PORT (default 9464; the
#                          liveness probe reads it)
#   MORPHEUS_XDP_MODE      native (default) or generic
#   MORPHEUS_MAPS          maps pinned by another owner (bpfman): the directory of the
#                          program's map pins, or its parent /run/bpfman/fs/maps (the agent
#                          finds the program's own); the agent never removes them
#   MORPHEUS_NETNS         named network namespace of the interface (tests; a pod uses the
#                          host network instead)
# Arguments are passed on to `morpheus run` (e.g. --swap prog-array --interval 1).
set -eu

die() {
    echo "morpheus-entrypoint: $*" >&2
    exit 2
}

[ -n "${MORPHEUS_IFACE:-}" ] || die "set MORPHEUS_IFACE to the interface the agent attaches to"
command -v morpheus >/dev/null 2>&1 || die "the morpheus CLI is not on PATH"

object="${MORPHEUS_OBJECT:-}"
if [ -z "$object" ]; then
    [ -n "${MORPHEUS_NF:-}" ] || die "set MORPHEUS_OBJECT (a BPF object file) or MORPHEUS_NF"
    object=$(morpheus nf list --json | python3 -c '
import json, sys
name = sys.argv[1]
found = [nf["object"] for nf in json.load(sys.stdin) if nf["name"] == name]
print(found[0] if found else "")' "$MORPHEUS_NF") || die "cannot list the built-in NFs"
    [ -n "$object" ] || die "MORPHEUS_NF=$MORPHEUS_NF is not a built-in network function" \
        "(morpheus nf list)"
fi
[ -r "$object" ] || die "cannot read the BPF object $object (mounted from the ConfigMap?)"

# Pins must live on the host's bpffs to outlive the pod: a bpffs private to the container
# would vanish with it and take the program's maps along.
fstype=$(stat -f -c %T /sys/fs/bpf 2>/dev/null || true)
[ "$fstype" = "bpf_fs" ] || die "/sys/fs/bpf is not a bpffs (it is '${fstype:-missing}'):" \
    "mount the host's /sys/fs/bpf into the container (a hostPath volume)"
if [ -n "${MORPHEUS_MAPS:-}" ]; then
    [ -d "$MORPHEUS_MAPS" ] || die "no directory $MORPHEUS_MAPS (MORPHEUS_MAPS): mount the" \
        "maps' owner's bpffs (bpfman: hostPath /run/bpfman/fs)"
    fstype=$(stat -f -c %T "$MORPHEUS_MAPS" 2>/dev/null || true)
    [ "$fstype" = "bpf_fs" ] || die "$MORPHEUS_MAPS is not on a bpffs (it is '$fstype'):" \
        "mount the maps' owner's bpffs into the container"
fi
mkdir -p /run/morpheus || die "cannot create /run/morpheus (the control sockets' directory)"
[ -w /run/morpheus ] || die "/run/morpheus is not writable"

# The interface must be visible from here (host network, or the given namespace).
if [ -z "${MORPHEUS_NETNS:-}" ]; then
    python3 -c 'import socket, sys; socket.if_nametoindex(sys.argv[1])' "$MORPHEUS_IFACE" \
        2>/dev/null || die "no interface $MORPHEUS_IFACE in this network namespace" \
        "(does the pod run with hostNetwork: true?)"
elif [ ! -e "/run/netns/$MORPHEUS_NETNS" ]; then
    die "no network namespace $MORPHEUS_NETNS under /run/netns"
fi

set -- run "$object" --iface "$MORPHEUS_IFACE" \
    --name "${MORPHEUS_NAME:-morpheus-$MORPHEUS_IFACE}" \
    --metrics-port "${MORPHEUS_METRICS_PORT:-9464}" \
    --xdp-mode "${MORPHEUS_XDP_MODE:-native}" \
    ${MORPHEUS_PROGRAM:+--program "$MORPHEUS_PROGRAM"} \
    ${MORPHEUS_MAPS:+--maps "$MORPHEUS_MAPS"} \
    ${MORPHEUS_NETNS:+--netns "$MORPHEUS_NETNS"} \
    "$@"
exec morpheus "$@"
