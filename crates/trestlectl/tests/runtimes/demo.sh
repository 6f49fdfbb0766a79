#!/bin/bash
# `trestlectl demo --runtime $RUNTIME` (podman or containerd) against a runtime of the script's own, then checks
# that the runtime holds nothing of the demo's: no container, image or containerd namespace, no container process.
# (The demo's links and rules live in its own private namespaces, which die with it.)
source "$(dirname "$0")/lib.sh"
: "${RUNTIME:?podman or containerd}"
private_state

case $RUNTIME in
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

step "trestlectl demo --runtime $RUNTIME"
"$BINS/trestlectl" demo --runtime "$RUNTIME" --no-color --bin-dir "$BINS" >"$WORK/demo.out" 2>"$WORK/demo.err" \
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
esac
# The containers' processes are gone too (they would be in this PID namespace, below the runtime's).
! pgrep -f '/bin/sleep 86400' >/dev/null || fail "container processes left: $(pgrep -af '/bin/sleep 86400')"
step "demo --runtime $RUNTIME: ok"
