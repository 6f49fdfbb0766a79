#!/bin/bash
# The kubelet's path, runtime half: containerd with its CRI service on $WORK/containerd.sock, trestle as its CNI
# network. The CRI client half is the Rust test (tests/cri), which connects to that socket from outside, drives
# RunPodSandbox .. RemovePodSandbox, and touches $WORK/done when it is finished.
source "$(dirname "$0")/lib.sh"
private_state
busybox_rootfs
install_trestle trcri0 10.79.0.0/24 "$WORK/ipam"
cp "$REF/loopback" /opt/cni/bin/
CONTAINERD_SOCK=$WORK/containerd.sock
start_containerd
import_image k8s.io
touch "$WORK/ready"
step "containerd CRI ready on $CONTAINERD_SOCK (pid $containerd_pid)"
for _ in $(seq 3000); do
    [[ -e $WORK/done ]] && exit 0
    sleep 0.1
done
fail "the CRI client never finished"
