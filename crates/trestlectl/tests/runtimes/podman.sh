#!/bin/bash
# podman with its CNI backend (a real libcni client) runs containers on a trestle network.
source "$(dirname "$0")/lib.sh"
private_state
busybox_rootfs
docker_like_firewall nft

step "install trestle as a network add-on would"
install_trestle trpod0 10.77.0.0/24

podman_conf
cat >>"$WORK/containers.conf" <<CONF
[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin", "$REF"]
network_config_dir = "/etc/cni/net.d"
CONF
export TRESTLE_LOG_LEVEL=debug TRESTLE_LOG_FILE=$WORK/trestle.log
P=(podman --root /var/lib/containers/storage --runroot /run/containers --storage-driver vfs)
RUN=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network trestlenet)
"${P[@]}" import "$WORK/rootfs.tar" localhost/trestle-bb:latest >/dev/null
"${P[@]}" network ls

step "two containers get addresses from trestle-ipam and reach each other"
"${P[@]}" run -d --name web "${RUN[@]}" localhost/trestle-bb httpd -f -p 8080 -h /www >/dev/null
web_ip=$("${P[@]}" inspect -f '{{(index .NetworkSettings.Networks "trestlenet").IPAddress}}' web)
echo "web: $web_ip"
[[ $web_ip == 10.77.0.* ]] || fail "web got $web_ip"
"${P[@]}" exec web ip addr show eth0 | grep -q "inet $web_ip/24" || fail "eth0 of web lacks $web_ip"
page=$("${P[@]}" run --rm --name client "${RUN[@]}" localhost/trestle-bb sh -c "$(fetch "$web_ip")")
[[ $page == *"served by trestle"* ]] || fail "client fetched: $page"
[[ $(reserved trestlenet) == "$web_ip" ]] || fail "reservations after client exit: $(reserved trestlenet | xargs)"

step "trestlectl lists and checks what podman wrote"
id=$("${P[@]}" inspect -f '{{.Id}}' web)
netns=$("${P[@]}" inspect -f '{{.NetworkSettings.SandboxKey}}' web)
ctl ls | tee "$WORK/ls.txt"
awk -v id="$id" -v ip="$web_ip/24" '$1=="trestlenet" && $2==id && $3=="eth0" && $4==ip {ok=1} END {exit !ok}' \
    "$WORK/ls.txt" || fail "ls does not show podman's attachment"
ctl check trestlenet "$netns" --container-id "$id" --conf-dir /etc/cni/net.d --cni-path /opt/cni/bin

step "podman's DEL reads state trestlectl wrote"
ctl del trestlenet "$netns" --container-id "$id" --cni-path /opt/cni/bin
[[ -z $(reserved trestlenet) ]] || fail "trestlectl del left $(reserved trestlenet)"
new_ip=$(ctl add trestlenet "$netns" --container-id "$id" --cni-path /opt/cni/bin | grep -o '10\.77\.0\.[0-9]*' | head -1)
echo "re-added by trestlectl: $new_ip"
: >"$WORK/trestle.log.$(date -u +%F)"
"${P[@]}" network disconnect trestlenet web
grep -q "DEL $id eth0: prevResult \[$new_ip/24\]" "$WORK"/trestle.log.* \
    || fail "podman's DEL did not carry trestlectl's cached result: $(grep 'DEL ' "$WORK"/trestle.log.* | tail -3)"
[[ -z $(reserved trestlenet) ]] || fail "podman disconnect left $(reserved trestlenet)"
[[ ! -e /var/lib/cni/results/trestlenet-$id-eth0 ]] || fail "cache entry left after podman's DEL"

step "stopping and removing containers releases their addresses"
"${P[@]}" run -d --name web2 "${RUN[@]}" localhost/trestle-bb sleep 600 >/dev/null
[[ -n $(reserved trestlenet) ]] || fail "web2 holds no address"
"${P[@]}" rm -f -t 0 web web2 >/dev/null
[[ -z $(reserved trestlenet) ]] || fail "addresses left after rm: $(reserved trestlenet | xargs)"
[[ -z $(ls /var/lib/cni/results 2>/dev/null) ]] || fail "cache entries left: $(ls /var/lib/cni/results)"
firewall_unchanged
step "podman: ok"
