#!/usr/bin/env bash
# A real, offline containerd for criguard's end-to-end tests.
#
#   containerd-lab.sh up     install packages if missing, start containerd (Debian's package,
#                            CRI plugin, runc, overlayfs, CNI bridge) on $RUN/containerd.sock,
#                            build the pause and busybox images offline and import them, and
#                            serve busybox from a local registry that demands credentials
#                            ($REGISTRY/criguard-e2e/private:1.0, see registry.py)
#   containerd-lab.sh down   remove the lab's pods, stop containerd, remove the bridge
#
# Idempotent. Everything lives under $LAB (/var/lib/criguard-e2e) and $RUN (/run/criguard-e2e);
# pod traffic never leaves the host (iptables FORWARD drop on the lab bridge). Needs root.
#
# Traps this machine kind sets, handled below:
#  - root lacks CAP_SYS_RESOURCE: runc cannot set the sandbox's oom_score_adj (-998) and
#    RunPodSandbox fails with "can't get final child's PID from pipe: EOF";
#    restrict_oom_score_adj = true clamps it.
#  - containerd 1.6 needs a CNI network that gives the pod an eth0 address (bridge + host-local).
#  - container stats need a cgroup parent in the pod config (the test sets one).
#  - shim sockets and FIFOs go to /run/containerd whatever the config says; their names are
#    hashed from our socket path, so they never clash with a system containerd.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=${CRIGUARD_E2E_LAB:-/var/lib/criguard-e2e}
RUN=${CRIGUARD_E2E_RUN:-/run/criguard-e2e}
SOCK=$RUN/containerd.sock
REGISTRY=127.0.0.1:5055
REGISTRY_USER=criguard-e2e
# A test credential: the e2e test checks that it reaches the registry and never the audit log.
REGISTRY_PASSWORD=e2e-registry-password-7f3a
BRIDGE=cgtest0
SUBNET=10.89.0.0/16

log() { echo "[containerd-lab] $*" >&2; }
die() { echo "[containerd-lab] ERROR: $*" >&2; exit 1; }

# shellcheck source=tests/lib/debian.sh
. "$HERE/../lib/debian.sh"

install_packages() {
  install_missing_packages containerd runc containernetworking-plugins iptables gcc libc6-dev \
    python3 iproute2
}

write_configs() {
  mkdir -p "$LAB"/{cni/net.d,cni/networks,containerd,images,build,log} "$RUN"
  cat >"$LAB/containerd.toml" <<TOML
version = 2
root = "$LAB/containerd"
state = "$RUN/containerd"

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$LAB/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    tolerate_missing_hugetlb_controller = true
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$RUN/runc"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$LAB/cni/net.d"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$LAB/certs.d"
TOML
  cat >"$LAB/cni/net.d/10-criguard-e2e.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "criguard-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$SUBNET"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$LAB/cni/networks"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # Image pulls must never leave the machine: every registry resolves to a closed local port.
  rm -rf "$LAB/certs.d"
  for host in registry.k8s.io docker.io registry-1.docker.io gcr.io quay.io ghcr.io; do
    mkdir -p "$LAB/certs.d/$host"
    printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' \
      >"$LAB/certs.d/$host/hosts.toml"
  done
  # The lab's own registry speaks plain HTTP.
  mkdir -p "$LAB/certs.d/$REGISTRY"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$REGISTRY" "$REGISTRY" >"$LAB/certs.d/$REGISTRY/hosts.toml"
}

registry_running() { [ -s "$RUN/registry.pid" ] && kill -0 "$(cat "$RUN/registry.pid")" 2>/dev/null; }

start_registry() {
  registry_running && return
  setsid python3 "$HERE/registry.py" --layout "$LAB/images/busybox" --listen "$REGISTRY" \
    --repo criguard-e2e/private --tag 1.0 --user "$REGISTRY_USER" --password "$REGISTRY_PASSWORD" \
    --log "$LAB/log/registry-requests.log" >>"$LAB/log/registry.log" 2>&1 </dev/null &
  echo $! >"$RUN/registry.pid"
  for _ in $(seq 1 50); do
    python3 -c "import socket; socket.create_connection(('${REGISTRY%:*}', ${REGISTRY#*:}), 1)" 2>/dev/null && break
    sleep 0.1
  done
  registry_running || die "the lab registry did not start; see $LAB/log/registry.log"
  log "registry on http://$REGISTRY (credentials required)"
}

running() { [ -s "$RUN/containerd.pid" ] && kill -0 "$(cat "$RUN/containerd.pid")" 2>/dev/null; }

start_containerd() {
  if running; then
    log "containerd already running (pid $(cat "$RUN/containerd.pid"))"
    return
  fi
  setsid /usr/bin/containerd --config "$LAB/containerd.toml" >>"$LAB/log/containerd.log" 2>&1 </dev/null &
  echo $! >"$RUN/containerd.pid"
  for _ in $(seq 1 100); do
    ctr --address "$SOCK" version >/dev/null 2>&1 && break
    sleep 0.2
  done
  ctr --address "$SOCK" version >/dev/null 2>&1 || die "containerd did not start; see $LAB/log/containerd.log"
  ctr --address "$SOCK" plugins ls | awk '$2=="cri"{print $4}' | grep -qx ok \
    || die "containerd's CRI plugin is not ok; see $LAB/log/containerd.log"
  log "containerd $(containerd --version | awk '{print $3}') on unix://$SOCK"
}

contain_pod_network() {
  for rule in "-i $BRIDGE ! -o $BRIDGE -j DROP" "-o $BRIDGE ! -i $BRIDGE -j DROP"; do
    # shellcheck disable=SC2086
    iptables -C FORWARD $rule 2>/dev/null || iptables -I FORWARD 1 $rule
  done
}

build_images() {
  local bin=$LAB/build/pause
  if [ ! -x "$bin" ] || [ "$HERE/pause.c" -nt "$bin" ]; then
    gcc -static -O2 -o "$bin" "$HERE/pause.c"
  fi
  local busybox=$LAB/build/busybox-deb/bin/busybox
  if [ ! -x "$busybox" ]; then
    ( cd "$LAB/build" && rm -f busybox_*.deb && apt-get download busybox >/dev/null 2>&1 ) \
      || ( apt-get update -qq && cd "$LAB/build" && apt-get download busybox >/dev/null )
    local debs=("$LAB"/build/busybox_*.deb)
    dpkg-deb -x "${debs[0]}" "$LAB/build/busybox-deb"
  fi
  python3 "$HERE/images.py" --pause "$bin" --busybox "$busybox" --out "$LAB/images" >"$LAB/log/images.log"
  for archive in "$LAB"/images/*.tar; do
    ctr --address "$SOCK" -n k8s.io images import "$archive" >>"$LAB/log/images.log" 2>&1 \
      || die "importing $archive failed; see $LAB/log/images.log"
  done
  log "images imported: $(ctr --address "$SOCK" -n k8s.io images ls -q | tr '\n' ' ')"
}

down() {
  if running; then
    for ns in $(ctr --address "$SOCK" namespaces ls -q 2>/dev/null); do
      for t in $(ctr --address "$SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr --address "$SOCK" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      done
    done
    sleep 0.5
    local pid
    pid=$(cat "$RUN/containerd.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/containerd.pid" "$SOCK" "$SOCK.ttrpc"
  if registry_running; then kill -TERM "$(cat "$RUN/registry.pid")" 2>/dev/null || true; fi
  rm -f "$RUN/registry.pid"
  # Shims of this lab's containerd name our socket on their command line.
  for d in /proc/[0-9]*; do
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q -- "-address $SOCK "; then
      kill -KILL "${d#/proc/}" 2>/dev/null || true
    fi
  done
  for rule in "-i $BRIDGE ! -o $BRIDGE -j DROP" "-o $BRIDGE ! -i $BRIDGE -j DROP"; do
    # shellcheck disable=SC2086
    while iptables -C FORWARD $rule 2>/dev/null; do iptables -D FORWARD $rule; done
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  log "down"
}

[ "$(id -u)" = 0 ] || die "must run as root"
case "${1:-}" in
  up)
    install_packages
    write_configs
    start_containerd
    contain_pod_network
    build_images
    start_registry
    echo "unix://$SOCK"
    ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
