# Shared by the runtime scripts. They run under `unshare --mount --net --fork` (see ../runtimes.rs): the runtime's
# "host" is a network namespace of the test's own, and /run, /var/lib, /etc/cni, /opt, /dev/shm and /var/tmp are
# private tmpfs mounts, so nothing of a run reaches the machine's namespace or disks, or another script's run.
set -euo pipefail
: "${BINS:?dir with trestle, trestle-ipam, trestlectl, trestled}" "${WORK:?scratch dir}" "${REF:?reference plugins dir}"

step() { echo "== $*" >&2; }
fail() { echo "FAIL: $*" >&2; exit 1; }

private_state() {
    # Mount points that exist on any machine with the runtimes installed: a run creates nothing on the real disk.
    # /dev/shm and /var/tmp too: podman keeps its lock file in /dev/shm (libpod_lock) and image copies in /var/tmp,
    # and two scripts that share them race on creating the lock file on a machine's first run.
    local d
    for d in /run /var/lib /etc/cni /opt /dev/shm /var/tmp; do
        [[ -d $d ]] || fail "$d missing (is podman installed?)"
        mount -t tmpfs tmpfs "$d"
    done
    mkdir -p /run/netns /etc/cni/net.d /opt/cni/bin /var/lib/cni
}

# A firewall like the one Docker leaves on a host, in the script's own namespace: br_netfilter sending bridged
# frames through iptables, a FORWARD policy of DROP, a DOCKER-USER chain; through iptables-nft (Docker's way here,
# the default) or iptables-legacy ($1 = legacy). firewall_unchanged checks, at the end, that the filter table is
# exactly as it was (rule by rule, counters aside): trestle's forward rules came and went with its networks.
docker_like_firewall() {
    FIREWALL_IPT=iptables-${1:-nft}
    local nf=/proc/sys/net/bridge/bridge-nf-call-iptables
    [[ -e $nf ]] || fail "$nf missing: br_netfilter is not loaded (a Docker engine loads it)"
    echo 1 >"$nf"
    "$FIREWALL_IPT" -P FORWARD DROP
    "$FIREWALL_IPT" -N DOCKER-USER
    "$FIREWALL_IPT" -A DOCKER-USER -j RETURN
    "$FIREWALL_IPT" -A FORWARD -j DOCKER-USER
    FIREWALL_BEFORE=$(filter_table)
}
filter_table() { "$FIREWALL_IPT-save" -t filter | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//'; }
firewall_unchanged() {
    local now
    now=$(filter_table)
    [[ $now == "$FIREWALL_BEFORE" ]] || fail "the filter table is not as it was: $(diff <(echo "$FIREWALL_BEFORE") <(echo "$now"))"
}

# A busybox image built locally (no registry is reachable): /bin/busybox, its applets, and a page for httpd.
busybox_rootfs() {
    local root=$WORK/rootfs
    mkdir -p "$root/bin" "$root/www" "$root/tmp" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for a in sh sleep ip nc printf httpd cat hostname ls netstat; do ln -sf busybox "$root/bin/$a"; done
    echo "served by trestle" >"$root/www/index.html"
    tar -C "$root" -cf "$WORK/rootfs.tar" .
}

# IPAM_MODE=daemon runs the same script with trestle-ipam in daemon mode: a trestled on the default socket of the
# private /run, and "daemon": true in the network's ipam config.
IPAM_MODE=${IPAM_MODE:-embedded}
TRESTLED_SOCK=/run/trestle/ipam.sock

# The addresses a trestle-ipam network holds: reservation files under the default dataDir, or the daemon's view.
reserved() {
    if [[ $IPAM_MODE == daemon ]]; then
        ctl ipam show --socket "$TRESTLED_SOCK" --network "$1" --json \
            | { grep -o '"address": *"[^"]*"' || true; } | cut -d'"' -f4 | sort
    else
        ls "/var/lib/cni/networks/$1" 2>/dev/null | grep -E '^[0-9a-f.:]+$' | sort || true
    fi
}

# Starts trestled (daemon mode only); it dies with the script's PID namespace.
start_trestled() {
    [[ $IPAM_MODE == daemon ]] || return 0
    "$BINS/trestled" --host-local-dir "" >"$WORK/trestled.log" 2>&1 &
    for _ in $(seq 200); do
        ctl ipam show --socket "$TRESTLED_SOCK" --json >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    fail "trestled did not start: $(cat "$WORK/trestled.log")"
}

ctl() { "$BINS/trestlectl" "$@"; }

# Installs trestle as a network add-on would: the binaries into /opt/cni/bin and network "trestlenet" on bridge $1
# and subnet $2 (IPAM state under $3 when given). cniVersion 1.0.0 alone: podman 4 and containerd 1.6 embed
# libcni 1.1, which reads cached results up to 1.0.0, and trestlectl (which would pick 1.1.0 from a cniVersions
# list) must write results they can read.
install_trestle() {
    local data=${3:+, \"dataDir\": \"$3\"}
    [[ $IPAM_MODE == daemon ]] && data="$data, \"daemon\": true"
    start_trestled
    cat >"$WORK/trestlenet.conflist" <<CONF
{"cniVersion": "1.0.0", "name": "trestlenet", "plugins": [{"type": "trestle", "bridge": "$1", "isGateway": true,
 "ipMasq": true, "ipam": {"type": "trestle-ipam", "ranges": [[{"subnet": "$2"}]],
 "routes": [{"dst": "0.0.0.0/0"}]$data}}]}
CONF
    ctl install --from "$BINS" --bin-dir /opt/cni/bin --conf-dir /etc/cni/net.d --config "$WORK/trestlenet.conflist"
}

# The command a client container runs to fetch the page from $1 (busybox-static's wget crashes in its resolver).
fetch() { echo "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 $1 8080"; }

# containerd on a private root and state dir, its CRI plugin using /etc/cni/net.d and /opt/cni/bin, and a busybox
# image whose command sleeps standing in as the pause image.
CONTAINERD_SOCK=${CONTAINERD_SOCK:-/run/containerd/containerd.sock}
start_containerd() {
    cat >"$WORK/containerd.toml" <<CONF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/trestle-pause:latest"
  # The sandbox's oom_score_adj (-998) needs CAP_SYS_RESOURCE, which these machines do not grant.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
CONF
    containerd --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
    containerd_pid=$!
    trap 'kill "$containerd_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do
        [[ -S $CONTAINERD_SOCK ]] && ctr -a "$CONTAINERD_SOCK" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "containerd did not start: $(tail -5 "$WORK/containerd.log")"
}

# Imports the busybox image into a containerd namespace (through podman's docker-archive writer).
import_image() {
    local P=(podman --root /var/lib/containers/storage --runroot /run/containers --storage-driver vfs)
    local img
    if [[ ! -f $WORK/trestle-bb.tar ]]; then
        "${P[@]}" import "$WORK/rootfs.tar" localhost/trestle-bb:latest >/dev/null
        "${P[@]}" import --change 'CMD ["/bin/sleep", "86400"]' "$WORK/rootfs.tar" localhost/trestle-pause:latest >/dev/null
        # One archive per image: ctr gives every image of a multi-image docker archive the first one's config.
        for img in trestle-bb trestle-pause; do
            "${P[@]}" save --format docker-archive -o "$WORK/$img.tar" "localhost/$img:latest"
        done
    fi
    for img in trestle-bb trestle-pause; do
        ctr -a "$CONTAINERD_SOCK" -n "$1" images import "$WORK/$img.tar" >/dev/null
    done
}

# podman's settings for these machines (cgroupfs, no journald, runc), written to $WORK/containers.conf and exported;
# extra sections (podman.sh's [network]) are appended by the caller.
podman_conf() {
    cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
    export CONTAINERS_CONF=$WORK/containers.conf
}
