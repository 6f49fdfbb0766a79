#!/bin/bash
# containerd's own client, `ctr run --cni` (go-cni over libcni, /etc/cni/net.d and /opt/cni/bin), on trestle.
source "$(dirname "$0")/lib.sh"
private_state
busybox_rootfs
docker_like_firewall legacy

step "install trestle; ctr also wants the loopback plugin beside it"
install_trestle trctr0 10.78.0.0/24
cp "$REF/loopback" /opt/cni/bin/

start_containerd
# A containerd namespace of this run's own: runc puts a container in the cgroup <namespace>/<name>, and cgroupfs is
# the machine's, shared by the runs of this script that go on at the same time (one per IPAM mode): with one
# namespace for both, one run's "client" exiting removed the cgroup the other's was joining (ENODEV). $$ is 1 in
# both (a PID namespace each): the name comes from the run's own scratch directory.
NS=trestle$(printf %s "$WORK" | cksum | cut -d" " -f1)
import_image "$NS"
# runc leaves the namespace's own cgroup directory (one per controller) in the machine's cgroupfs: gone at the end.
trap 'kill "$containerd_pid" 2>/dev/null || true; sleep 0.2; rmdir /sys/fs/cgroup/*/"$NS"/* /sys/fs/cgroup/*/"$NS" /sys/fs/cgroup/"$NS" 2>/dev/null || true' EXIT
C=(ctr -a "$CONTAINERD_SOCK" -n "$NS")
CRUN=(run --rm --cni --snapshotter native)

step "a container on trestle serves a page; a second one fetches it"
"${C[@]}" "${CRUN[@]}" localhost/trestle-bb:latest web httpd -f -p 8080 -h /www >"$WORK/web.log" 2>&1 &
web_ctr=$!
web_ip=
for _ in $(seq 100); do
    web_ip=$(ctl ls trestlenet | awk -v id="$NS-web" '$2==id {sub("/24", "", $4); print $4}')
    [[ -n $web_ip ]] && break
    sleep 0.1
done
[[ $web_ip == 10.78.0.* ]] || fail "web got no trestle address: $(cat "$WORK/web.log")"
echo "web: $web_ip"
page=$("${C[@]}" "${CRUN[@]}" localhost/trestle-bb:latest client sh -c "$(fetch "$web_ip")")
[[ $page == *"served by trestle"* ]] || fail "client fetched: $page"
[[ $(reserved trestlenet) == "$web_ip" ]] || fail "client's address not released: $(reserved trestlenet | xargs)"

step "trestlectl checks the attachment go-cni cached"
pid=$("${C[@]}" task ls | awk '$1=="web" {print $2}')
ctl check trestlenet "/proc/$pid/ns/net" --container-id "$NS-web"

step "stopping the task makes ctr DEL it"
"${C[@]}" task kill -s SIGKILL web
wait "$web_ctr" || true
[[ -z $(reserved trestlenet) ]] || fail "addresses left: $(reserved trestlenet | xargs)"
[[ -z $(ls /var/lib/cni/results 2>/dev/null) ]] || fail "cache entries left: $(ls /var/lib/cni/results)"
firewall_unchanged
step "containerd (ctr): ok"
