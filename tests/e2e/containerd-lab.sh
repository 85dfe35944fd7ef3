#!/usr/bin/env bash
# A real, offline containerd for criguard's end-to-end tests, of one of three generations.
#
#   containerd-lab.sh up [1.6|1.7|2.1]
#            install packages if missing, start containerd (CRI plugin, runc, overlayfs, CNI
#            bridge) on $RUN/containerd.sock, build the pause, busybox and data images offline
#            and import them, and serve busybox from a local registry that demands credentials
#            ($REGISTRY/criguard-e2e/private:1.0, see registry.py). Prints the endpoint.
#   containerd-lab.sh down   remove the lab's pods, stop containerd, remove the bridge
#   containerd-lab.sh bin [1.6|1.7|2.1]   the directory of that generation's containerd and ctr
#
# Generations, all Debian's builds: 1.6 is bookworm's package (installed as usual); 1.7 is
# trixie's and 2.1 sid's, downloaded with a private apt state (tests/lib/debian.sh: the
# system's sources and packages are never touched; nothing from trixie or sid is installed) and
# unpacked with dpkg-deb into $LAB/containerd-<generation>. Their only dependency is libc >= 2.34;
# bookworm's runc and CNI plugins serve all three. One lab runs at a time.
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
#  - containerd 2.x reads only a `version = 3` config: the CRI plugin is split into
#    io.containerd.cri.v1.runtime and io.containerd.cri.v1.images, registry hosts come only
#    from config_path, and NRI is on by default with a system-wide socket: the lab's is its own.
#  - containerd looks its shim up in PATH: the unpacked generation's directory goes first.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB=${CRIGUARD_E2E_LAB:-/var/lib/criguard-e2e}
RUN=${CRIGUARD_E2E_RUN:-/run/criguard-e2e}
SOCK=$RUN/containerd.sock
REGISTRY=127.0.0.1:5055
REGISTRY_USER=criguard-e2e
# A test credential: the e2e test checks that it reaches the registry and never the audit log.
REGISTRY_PASSWORD=e2e-registry-password-7f3a
# busybox's files under another registry's name (tests/support/e2e.rs: FOREIGN_IMAGE).
FOREIGN_IMAGE=quay.io/criguard-e2e/tools:1.0
# The OTLP/gRPC collector containerd 2.x sends its spans to (tests/support/e2e.rs: OTLP).
OTLP=127.0.0.1:4327
BRIDGE=cgtest0
SUBNET=10.89.0.0/16

GENERATION=${2:-${CRIGUARD_E2E_CONTAINERD:-1.6}}

log() { echo "[containerd-lab] $*" >&2; }
die() { echo "[containerd-lab] ERROR: $*" >&2; exit 1; }

# shellcheck source=tests/lib/debian.sh
. "$HERE/../lib/debian.sh"

install_packages() {
  install_missing_packages containerd runc containernetworking-plugins iptables gcc libc6-dev \
    python3 iproute2
}

# The Debian suite each generation comes from (bookworm's is the installed package).
suite_of() {
  case "$1" in
    1.6) echo bookworm ;;
    1.7) echo trixie ;;
    2.1) echo sid ;;
    *) die "unknown containerd generation $1 (1.6, 1.7 or 2.1)" ;;
  esac
}

bin_dir() {
  if [ "$1" = 1.6 ]; then echo /usr/bin; else echo "$LAB/containerd-$1/usr/bin"; fi
}

# Unpacks the generation's containerd package into $LAB/containerd-<generation>, once.
fetch_containerd() {
  local generation=$1 suite prefix
  [ "$generation" = 1.6 ] && return
  suite=$(suite_of "$generation")
  prefix=$LAB/containerd-$generation
  [ -x "$prefix/usr/bin/containerd" ] && return
  log "fetching containerd $generation from Debian $suite"
  local version
  version=$(newer_debian_version containerd "$suite")
  case "$version" in
    "$generation".*) ;;
    *) die "Debian $suite has containerd ${version:-none}, not $generation.x" ;;
  esac
  rm -rf "$prefix.new"
  newer_debian_unpack "$prefix.new" "containerd=$version"
  mv "$prefix.new" "$prefix"
}

write_configs() {
  mkdir -p "$LAB"/{cni/net.d,cni/networks,images,build,log} "$RUN"
  if [ "${GENERATION%%.*}" -ge 2 ]; then write_config_v3; else write_config_v2; fi
}

write_config_v2() {
  cat >"$LAB/containerd.toml" <<TOML
version = 2
root = "$LAB/containerd-state-$GENERATION"
state = "$RUN/containerd-$GENERATION"

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
}

write_config_v3() {
  cat >"$LAB/containerd.toml" <<TOML
version = 3
root = "$LAB/containerd-state-$GENERATION"
state = "$RUN/containerd-$GENERATION"

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$LAB/opt"
  [plugins."io.containerd.nri.v1.nri"]
    socket_path = "$RUN/nri.sock"
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "$LAB/certs.d"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    tolerate_missing_hugetlb_controller = true
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$RUN/runc"
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$LAB/cni/net.d"
      max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
TOML
}

write_cni_and_registries() {
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
  local bin tracing=()
  bin=$(bin_dir "$GENERATION")
  # 2.x exports its spans over OTLP/gRPC when told by the OpenTelemetry variables: only under
  # a caller's sampled span (ratio 0 for roots), to the lab's collector port, where the trace
  # test listens; with nobody there, containerd drops them.
  if [ "${GENERATION%%.*}" -ge 2 ]; then
    tracing=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$OTLP" OTEL_EXPORTER_OTLP_PROTOCOL=grpc
      OTEL_EXPORTER_OTLP_INSECURE=true OTEL_SERVICE_NAME=containerd
      OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0
      OTEL_BSP_SCHEDULE_DELAY=200)
  fi
  env "${tracing[@]}" PATH="$bin:$PATH" setsid "$bin/containerd" --config "$LAB/containerd.toml" \
    >>"$LAB/log/containerd.log" 2>&1 </dev/null &
  echo $! >"$RUN/containerd.pid"
  echo "$GENERATION" >"$RUN/generation"
  for _ in $(seq 1 100); do
    ctr --address "$SOCK" version >/dev/null 2>&1 && break
    sleep 0.2
  done
  ctr --address "$SOCK" version >/dev/null 2>&1 || die "containerd did not start; see $LAB/log/containerd.log"
  # 1.x: io.containerd.grpc.v1 cri; 2.x also io.containerd.cri.v1 runtime and images.
  local statuses
  statuses=$(ctr --address "$SOCK" plugins ls \
    | awk '$1 ~ /^io[.]containerd[.](grpc|cri)[.]v1$/ && $2 ~ /^(cri|runtime|images)$/ {print $4}')
  if [ -z "$statuses" ] || grep -qvx ok <<<"$statuses"; then
    die "containerd's CRI plugin is not ok; see $LAB/log/containerd.log"
  fi
  log "containerd $("$bin/containerd" --version | awk '{print $3}') on unix://$SOCK"
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
  # busybox again under a registry no test policy allows: the image volume of a foreign image.
  ctr --address "$SOCK" -n k8s.io images tag --force docker.io/library/busybox:1.36 \
    "$FOREIGN_IMAGE" >>"$LAB/log/images.log" 2>&1 || die "tagging $FOREIGN_IMAGE failed"
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
  rm -f "$RUN/containerd.pid" "$RUN/generation" "$SOCK" "$SOCK.ttrpc" "$RUN/nri.sock"
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

# ctr of the generation that runs (or is about to).
ctr() {
  local generation=$GENERATION
  [ -s "$RUN/generation" ] && generation=$(cat "$RUN/generation")
  "$(bin_dir "$generation")/ctr" "$@"
}

[ "$(id -u)" = 0 ] || die "must run as root"
case "${1:-}" in
  up)
    install_packages
    fetch_containerd "$GENERATION"
    write_configs
    write_cni_and_registries
    start_containerd
    contain_pod_network
    build_images
    start_registry
    echo "unix://$SOCK"
    ;;
  down) down ;;
  bin) suite_of "$GENERATION" >/dev/null; bin_dir "$GENERATION" ;;
  *) die "usage: $0 up [1.6|1.7|2.1] | down | bin [1.6|1.7|2.1]" ;;
esac
