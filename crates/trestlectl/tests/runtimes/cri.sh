#!/bin/bash
# The kubelet's path, runtime half: containerd with its CRI service on $WORK/containerd.sock, trestle as its CNI
# network. The CRI client half is the Rust test (tests/cri), which connects to that socket from outside, drives
# RunPodSandbox .. RemovePodSandbox, and touches $WORK/done when it is finished.
source "$(dirname "$0")/lib.sh"
private_state
busybox_rootfs
cat >"$WORK/trestlenet.conflist" <<CONF
{"cniVersion": "1.0.0", "name": "trestlenet", "plugins": [{"type": "trestle", "bridge": "trcri0", "isGateway": true,
 "ipMasq": true, "ipam": {"type": "trestle-ipam", "ranges": [[{"subnet": "10.79.0.0/24"}]],
 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$WORK/ipam"}}]}
CONF
ctl install --from "$BINS" --bin-dir /opt/cni/bin --conf-dir /etc/cni/net.d --config "$WORK/trestlenet.conflist"
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
