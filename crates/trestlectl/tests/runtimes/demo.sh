#!/bin/bash
# `trestlectl demo --runtime $RUNTIME` against a runtime of the script's own (podman, containerd) or the machine's
# Docker engine (docker), or none (RUNTIME=none), then checks that the runtime holds nothing of the demo's: no
# container, image or containerd namespace, no container process. With MACHINE=1 the demo runs with
# --machine-netns, so its bridge, rules, state directory and /var/run/netns/pause1 are in the script's "machine"
# (its own namespaces), and the script checks those are gone and ip_forward is as it was.
source "$(dirname "$0")/lib.sh"
: "${RUNTIME:?none, docker, podman or containerd}"
MACHINE=${MACHINE:-0}

if [[ $RUNTIME == docker ]]; then
    # The machine's engine, reached through its socket bound under $WORK before /run becomes the script's own.
    [[ -S /run/docker.sock ]] || fail "no Docker engine socket at /run/docker.sock"
    # Without a PID namespace nothing dies with the script: whatever a failed run leaves in Docker goes here.
    sweep() {
        local suffix
        suffix=$(grep -o 'trestle-demo-pause-[0-9a-f]*' "$WORK/demo.out" 2>/dev/null | head -1 | cut -d- -f4)
        [[ -n $suffix ]] || return 0
        docker rm -f "trestle-demo-app-$suffix" "trestle-demo-pause-$suffix" >/dev/null 2>&1 || true
        docker rmi "localhost/trestle-demo-busybox:$suffix" >/dev/null 2>&1 || true
    }
    trap sweep EXIT
    : >"$WORK/docker.sock"
    mount --bind /run/docker.sock "$WORK/docker.sock"
    export DOCKER_HOST=unix://$WORK/docker.sock
fi
private_state

case $RUNTIME in
none | docker) ;;
podman)
    # The settings of podman.sh (cgroupfs, no journald, vfs storage on the private /var/lib), as files podman
    # reads by itself, so the demo runs the plain `podman` a person would type.
    podman_conf
    cat >"$WORK/storage.conf" <<CONF
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
    export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
    ;;
containerd)
    start_containerd
    # ctr reads its snapshotter from the environment; overlayfs is not usable on every private /var/lib.
    export CONTAINERD_SNAPSHOTTER=native
    ;;
*) fail "RUNTIME=$RUNTIME" ;;
esac

args=(demo --no-color --bin-dir "$BINS")
[[ $RUNTIME == none ]] || args+=(--runtime "$RUNTIME")
[[ $MACHINE == 1 ]] && args+=(--machine-netns)
forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
# The machine the demo takes over runs Docker, as the machines this suite runs on do: its firewall drops forwarded
# packets, and the demo's pods must talk all the same.
ruleset() { nft list ruleset | sed 's/counter packets [0-9]* bytes [0-9]*/counter/'; }
if [[ $MACHINE == 1 ]]; then
    docker_like_firewall nft
    ruleset_before=$(ruleset)
fi

step "trestlectl ${args[*]}"
"$BINS/trestlectl" "${args[@]}" >"$WORK/demo.out" 2>"$WORK/demo.err" \
    || fail "demo failed: $(tail -30 "$WORK/demo.out") $(cat "$WORK/demo.err")"
cat "$WORK/demo.out"

step "nothing of the demo is left in $RUNTIME"
case $RUNTIME in
podman)
    [[ -z $(podman ps -a -q) ]] || fail "containers left: $(podman ps -a)"
    [[ -z $(podman images -q) ]] || fail "images left: $(podman images)"
    ;;
containerd)
    ! ctr namespaces ls -q | grep -qx trestle-demo || fail "namespace trestle-demo left: $(ctr -n trestle-demo c ls)"
    ;;
docker)
    suffix=$(grep -o 'trestle-demo-pause-[0-9a-f]*' "$WORK/demo.out" | head -1 | cut -d- -f4)
    [[ -n $suffix ]] || fail "no pause container in the output"
    ! docker ps -a --format '{{.Names}}' | grep -q -- "-$suffix\$" || fail "containers left: $(docker ps -a)"
    ! docker image inspect "localhost/trestle-demo-busybox:$suffix" >/dev/null 2>&1 || fail "image left"
    ;;
esac
# The containers' processes are gone too (podman's and containerd's would be in this PID namespace; docker's are
# the machine's, where other tests' containers run, and `docker ps` above has answered for them).
if [[ $RUNTIME != docker ]]; then
    ! pgrep -f '/bin/sleep 86400' >/dev/null || fail "container processes left: $(pgrep -af '/bin/sleep 86400')"
fi

if [[ $MACHINE == 1 ]]; then
    step "--machine-netns: the script's own namespaces are as they were"
    links=$(ip -o link show | awk -F': ' '{print $2}' | xargs)
    [[ $links == lo ]] || fail "links left: $links"
    firewall_unchanged
    [[ $(ruleset) == "$ruleset_before" ]] || fail "rules left: $(diff <(echo "$ruleset_before") <(ruleset))"
    [[ -z $(ls -A /run/netns) ]] || fail "left in /run/netns: $(ls /run/netns)"
    [[ ! -e /var/lib/cni/networks/mybridge ]] || fail "state left: $(ls /var/lib/cni/networks/mybridge)"
    [[ $(cat /proc/sys/net/ipv4/ip_forward) == "$forward_before" ]] || fail "ip_forward not put back"
fi
step "demo ${args[*]}: ok"
