#!/usr/bin/env bash
# Runs docker-compose.yml for real, with Debian's podman and podman-compose, and checks that
# the cluster works: build the image with no network, start kv1..kv3, wait for health,
# put/get from the host (published port) and from inside a container (service names),
# SIGKILL one node (reads and writes still succeed with N=3, R=2, W=2), restart it (it
# rejoins), stop one gracefully (exit 0), then tear everything down, even on failure.
#
# Usage: deploy/test-compose.sh            (as root; called by .ci/run after `make test`)
#
# Needs the project's venv (.venv, made by `make setup`) for the host-side CLI and to build
# the wheelhouse. Installs podman, podman-compose, debootstrap, runc and docker-compose with
# apt-get when missing; prints one "SKIP" line and exits 0 only when podman cannot be had.
#
# No container registry is used: the base image is a Debian bookworm made by debootstrap
# from the machine's own apt mirror (read from /etc/apt/sources.list*), imported as
# localhost/kvstore-base and cached in $KVSTORE_CI_CACHE (default /var/cache/kvstore-ci).
# Sandbox-only podman settings (runc, ulimits) are in deploy/containers.conf.
#
# Environment: KVSTORE_CI_CACHE (cache dir), KVSTORE_CI_PROJECT (compose project name,
# default kvstoreci), KVSTORE_CI_REBUILD_BASE=1 (debootstrap again), KVSTORE_CI_KEEP=1
# (leave the cluster running for a look; tear down later with the printed command).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KVSTORE_CI_CACHE:-/var/cache/kvstore-ci}
PROJECT=${KVSTORE_CI_PROJECT:-kvstoreci}
SUITE=bookworm
BASE_INCLUDE=python3,python3-venv
BASE_TAR=$CACHE/kvstore-base-$SUITE-v1.tar # bump the suffix when the base recipe changes
BASE_IMAGE=localhost/kvstore-base:latest
export KVSTORE_IMAGE=localhost/kvstore:ci
export CONTAINERS_CONF=$ROOT/deploy/containers.conf
COMPOSE_FILE=$ROOT/docker-compose.yml
VENV_PY=$ROOT/.venv/bin/python
HOST_KV=$ROOT/.venv/bin/kv
APT_PACKAGES=(podman podman-compose runc netavark aardvark-dns catatonit iptables debootstrap docker-compose)

T_START=$SECONDS
declare -A TIMES=()
log() { printf '[test-compose %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}
since() { echo $((SECONDS - $1)); }

# ------------------------------------------------------------------ tools
missing_packages() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || echo "$p"
  done
}

install_tools() {
  local missing
  missing=$(missing_packages | tr '\n' ' ')
  [ -z "${missing// /}" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    command -v podman >/dev/null || { echo "SKIP: deploy/test-compose.sh: podman is not installed and this is not root (apt-get needs root)"; exit 0; }
    die "missing packages ($missing) and not root to install them"
  fi
  log "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
  # shellcheck disable=SC2086
  if ! { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq $missing; } >"$CACHE/apt.log" 2>&1; then
    tail -n 20 "$CACHE/apt.log" >&2
    command -v podman >/dev/null || { echo "SKIP: deploy/test-compose.sh: podman cannot be installed (apt-get failed, see above)"; exit 0; }
    die "apt-get install failed for: $missing"
  fi
}

# The first deb URI serving $1 (e.g. bookworm) in the machine's apt sources, one-line or deb822.
find_mirror() {
  local suite=$1 f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() {
        if (isdeb && hassuite && uri != "" && !off) { print uri; found = 1; exit }
        isdeb = 0; hassuite = 0; uri = ""; off = 0
      }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:"   { for (i = 2; i <= NF; i++) if ($i == "deb") isdeb = 1 }
      tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == suite) hassuite = 1 }
      tolower($1) == "uris:"    { uri = $2 }
      tolower($1) == "enabled:" { if (tolower($2) == "no") off = 1 }
      END { if (!found) flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) print $i
      }' "$f"
  done
}

# ------------------------------------------------------------------ base image
build_base_image() {
  if [ "${KVSTORE_CI_REBUILD_BASE:-0}" = 1 ]; then
    rm -f "$BASE_TAR"
    podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true
  fi
  if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE: present"
    return 0
  fi
  if [ ! -s "$BASE_TAR" ]; then
    local mirror rootfs attempt
    mirror=$(find_mirror "$SUITE" | head -n 1)
    [ -n "$mirror" ] || die "no deb source for $SUITE in /etc/apt/sources.list{,.d/*}"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    log "debootstrap $SUITE (minbase + $BASE_INCLUDE) from the machine's apt mirror"
    for attempt in 1 2; do
      if debootstrap --variant=minbase --include="$BASE_INCLUDE" "$SUITE" "$rootfs" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1; then
        break
      fi
      [ $attempt = 2 ] && { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }
      log "debootstrap failed, retrying once"
      rm -rf "$rootfs"
      rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    done
    # Slim: package caches, apt lists, docs, manuals, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
      "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc "$rootfs"/usr/share/man \
      "$rootfs"/usr/share/info "$rootfs"/usr/share/locale
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$rootfs"
  fi
  log "podman import $BASE_TAR as $BASE_IMAGE"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
  podman run --rm --network none "$BASE_IMAGE" python3 -c \
    'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
    die "the base image's python3 is not 3.11"
}

# ------------------------------------------------------------------ kvstore image
build_image() {
  local ctx=$WORK/context
  mkdir -p "$ctx"
  # The build context: the working tree's files (tracked and new, minus ignored ones) ...
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -C "$ctx" -xf -
  else
    tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=kvdata -cf - . | tar -C "$ctx" -xf -
  fi
  # ... plus ./wheelhouse: kvstore's wheel and all its dependencies, built on the host. The
  # image's python is bookworm's 3.11 like the host's, so the same wheels install there.
  "$VENV_PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
    die "the venv's python is not 3.11: its wheels would not fit the image"
  log "pip wheel: kvstore and its dependencies"
  "$VENV_PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$ctx/wheelhouse" "$ctx" \
    >"$WORK/pip-wheel.log" 2>&1 || { tail -n 30 "$WORK/pip-wheel.log" >&2; die "pip wheel failed"; }
  rm -rf "$ctx/build" "$ctx"/*.egg-info
  log "podman build (--network none, BASE=$BASE_IMAGE)"
  local old
  old=$(podman image inspect --format '{{.Id}}' "$KVSTORE_IMAGE" 2>/dev/null || true)
  podman build --quiet --pull=never --network none --layers=false --format docker \
    --build-arg BASE="$BASE_IMAGE" -f "$ctx/deploy/Dockerfile" -t "$KVSTORE_IMAGE" "$ctx" \
    >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "podman build failed"; }
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$KVSTORE_IMAGE")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true # the previous run's image, now untagged
  fi
  local uid size
  uid=$(podman run --rm --network none --no-healthcheck "$KVSTORE_IMAGE" id -u)
  [ "$uid" = 10001 ] || die "the image runs as uid $uid, not the non-root 10001"
  podman run --rm --network none --no-healthcheck "$KVSTORE_IMAGE" kv --version >/dev/null ||
    die "kv does not run in the image"
  size=$(podman image inspect --format '{{.Size}}' "$KVSTORE_IMAGE")
  log "image $KVSTORE_IMAGE: $((size / 1024 / 1024)) MiB, runs as uid $uid"
}

# ------------------------------------------------------------------ cluster helpers
compose() { podman-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
ctr() { echo "${PROJECT}_$1_1"; } # podman-compose 1.0's container names

free_port() { # $1: preferred port
  "$VENV_PY" - "$1" <<'EOF'
import socket, sys
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            return False
    return True
want = int(sys.argv[1])
if free(want):
    print(want)
else:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
EOF
}

teardown() {
  local id
  compose down -v >/dev/null 2>&1 || true
  for id in $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true); do
    podman rm -f --time 5 "$id" >/dev/null 2>&1 || true
  done
  for id in $(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null || true); do
    podman volume rm -f "$id" >/dev/null 2>&1 || true
  done
  for n in $(podman network ls -q --filter "name=^${PROJECT}_" 2>/dev/null || true); do
    podman network rm -f "$n" >/dev/null 2>&1 || true
  done
}

on_exit() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ] && [ -n "${UP:-}" ]; then
    for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
      log "--- last log lines of $c"
      podman logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2
    done
    # What each container's DNS says of the peers' names (a node reaches peers by name).
    for c in $(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
      for n in ${PEER_NAMES:-}; do
        log "--- $c: getent ahostsv4 $n: $(timeout 10 podman exec "$c" getent ahostsv4 "$n" 2>&1 | head -1)"
      done
    done
  fi
  if [ "${KVSTORE_CI_KEEP:-0}" = 1 ] && [ -n "${UP:-}" ]; then
    log "KVSTORE_CI_KEEP=1: cluster left running; tear down with:"
    log "  CONTAINERS_CONF=$CONTAINERS_CONF KVSTORE_IMAGE=$KVSTORE_IMAGE podman-compose -p $PROJECT -f $COMPOSE_FILE down -v"
  else
    [ -n "${UP:-}" ] && teardown
  fi
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
  exit $rc
}

# Healthy = the compose health check command passes inside the container (podman runs
# health checks from systemd timers, which this sandbox lacks, so run it on demand).
wait_healthy() { # $1: service, $2: timeout seconds
  local c deadline state
  c=$(ctr "$1")
  deadline=$((SECONDS + $2))
  while :; do
    state=$(podman inspect --format '{{.State.Status}}' "$c" 2>/dev/null || echo missing)
    [ "$state" = running ] || die "$1 is $state, not running"
    podman healthcheck run "$c" >/dev/null 2>&1 && return 0
    [ $SECONDS -lt $deadline ] || die "$1 not healthy after $2 s"
    sleep 0.5
  done
}

# host-side CLI through a published port
hkv() { # $1: port, rest: kv arguments
  local port=$1
  shift
  "$HOST_KV" --node "127.0.0.1:$port" --timeout 5 "$@"
}

expect_value() { # $1: wanted value, rest: a command printing the value
  local want=$1 got
  shift
  got=$("$@") || die "'$*' failed (exit $?)"
  [ "$got" = "$want" ] || die "'$*' printed '$got', expected '$want'"
}

# ------------------------------------------------------------------ the StatefulSet's pods
# No Kubernetes here: run the three pods of deploy/k8s/statefulset.yaml the way the kubelet
# would (its command, args and env with $(VAR) expanded, the ConfigMap mounted, a read-only
# root filesystem, uid 10001, a volume per pod) on a podman network whose aliases are the
# pods' stable DNS names, started in order as OrderedReady does.
k8s_pod_spec() { # $1: ordinal, $2: output dir -> env, script, config/, alias, probe
  "$VENV_PY" - "$ROOT/deploy/k8s" "$1" "$2" <<'PY'
import pathlib, re, sys, yaml
k8s, ordinal, out = pathlib.Path(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
sts = yaml.safe_load((k8s / "statefulset.yaml").read_text())
cm = yaml.safe_load((k8s / "configmap.yaml").read_text())
(c,) = sts["spec"]["template"]["spec"]["containers"]
known = {"POD_NAME": f"{sts['metadata']['name']}-{ordinal}", "POD_NAMESPACE": "default"}
env = {}
for e in c["env"]:
    if "valueFrom" in e:
        v = known[e["name"]]
    else:
        v = re.sub(r"\$\((\w+)\)", lambda m: known.get(m.group(1), m.group(0)), e["value"])
    env[e["name"]] = known[e["name"]] = v
assert c["command"] == ["/bin/sh", "-c"], c["command"]
(out / "config").mkdir(parents=True, exist_ok=True)
for name, text in cm["data"].items():
    (out / "config" / name).write_text(text)
(out / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
(out / "script").write_text(c["args"][0])
(out / "alias").write_text(env["KV_ADVERTISE"].rsplit(":", 1)[0])
(out / "probe").write_text("\0".join(c["readinessProbe"]["exec"]["command"]))
PY
}

k8s_pods() {
  local net=${PROJECT}_k8s i dir c deadline
  podman network create --label "io.podman.compose.project=$PROJECT" "$net" >/dev/null
  for i in 0 1 2; do
    dir=$WORK/k8s/kvstore-$i
    mkdir -p "$dir"
    k8s_pod_spec "$i" "$dir"
    c=${PROJECT}_kvstore-$i
    podman volume create --label "io.podman.compose.project=$PROJECT" "${c}_data" >/dev/null
    # The Secret, as the kubelet would mount it (secret.yaml holds only a placeholder).
    mkdir -p "$dir/secret" && cp "$WORK/kvstore.key" "$dir/secret/cluster.key"
    podman run -d --name "$c" --label "io.podman.compose.project=$PROJECT" \
      --network "$net" --network-alias "$(cat "$dir/alias")" --hostname "kvstore-$i" \
      --read-only --tmpfs /tmp --user 10001:10001 --no-healthcheck \
      -v "${c}_data:/var/lib/kvstore" -v "$dir/config:/etc/kvstore:ro" -v "$dir/secret:/etc/kvstore-secret:ro" \
      --env-file "$dir/env" "$KVSTORE_IMAGE" /bin/sh -c "$(cat "$dir/script")" \
      >/dev/null 2>>"$WORK/podman.log"
    # OrderedReady: the next pod starts once this one passes its readiness probe
    deadline=$((SECONDS + 60))
    until xargs -0 -a "$dir/probe" podman exec "$c" >/dev/null 2>&1; do
      [ "$(podman inspect --format '{{.State.Status}}' "$c")" = running ] ||
        { podman logs "$c" >&2; die "pod kvstore-$i exited"; }
      [ $SECONDS -lt $deadline ] || { podman logs "$c" >&2; die "pod kvstore-$i not ready after 60 s"; }
      sleep 0.5
    done
  done
  # (grep -c, not grep -q: with pipefail, grep -q's early exit fails the pipeline)
  [ "$(podman logs "${PROJECT}_kvstore-0" 2>&1 | grep -c "founding the cluster")" = 1 ] ||
    die "kvstore-0 did not found the cluster"
  log "pods: kvstore-0..2 ready, in order"
  PEER_NAMES=$(for i in 0 1 2; do cat "$WORK/k8s/kvstore-$i/alias"; echo; done)
  # all three in the ring, reachable by their stable names; a write with W=3 reaches all
  deadline=$((SECONDS + 60))
  until podman exec "${PROJECT}_kvstore-2" kv cluster status --json 2>/dev/null | "$VENV_PY" -c \
    'import json,sys; d=json.load(sys.stdin); v=d["nodes"][d["view_of"]] or {}
sys.exit(sum(1 for m in d["members"] if m["up"]) != 3 or v.get("pending", True))'; do
    [ $SECONDS -lt $deadline ] || die "the StatefulSet's pods did not form a ring of 3"
    sleep 1
  done
  # W=3 and R=3: every replica answers (a fresh key per attempt, as above)
  local attempt=0
  deadline=$((SECONDS + 60))
  until attempt=$((attempt + 1)) &&
    podman exec "${PROJECT}_kvstore-1" kv put "k8s-$attempt" yes -w 3 >"$WORK/last" 2>&1 &&
    podman exec "${PROJECT}_kvstore-0" kv get "k8s-$attempt" -r 3 >"$WORK/last" 2>&1 &&
    [ "$(cat "$WORK/last")" = yes ]; do
    [ $SECONDS -lt $deadline ] || die "W=3/R=3 in the pods still fail after 60 s: $(cat "$WORK/last")"
    sleep 1
  done
  local key=k8s-$attempt
  log "pods: W=3/R=3 pass (attempt $attempt); SIGTERM kvstore-0 (PID 1), restart it"
  # Without an init (Kubernetes has none) the node is PID 1 and must still stop on SIGTERM,
  # exit 0, and on restart (data on its volume) rejoin instead of founding a new cluster.
  podman stop --time 30 "${PROJECT}_kvstore-0" >/dev/null 2>>"$WORK/podman.log"
  [ "$(podman inspect --format '{{.State.ExitCode}}' "${PROJECT}_kvstore-0")" = 0 ] ||
    die "kvstore-0 did not exit 0 on SIGTERM as PID 1"
  podman start "${PROJECT}_kvstore-0" >/dev/null 2>>"$WORK/podman.log"
  deadline=$((SECONDS + 60))
  until [ "$(podman exec "${PROJECT}_kvstore-0" kv get "$key" -r 3 2>/dev/null)" = yes ]; do
    [ $SECONDS -lt $deadline ] || die "kvstore-0 did not come back"
    sleep 0.5
  done
  [ "$(podman logs "${PROJECT}_kvstore-0" 2>&1 | grep -c "founding the cluster")" = 1 ] ||
    die "kvstore-0 founded the cluster again on restart"
  log "pods: kvstore-0 rejoined after its restart"
}

# ------------------------------------------------------------------ main
mkdir -p "$CACHE"
install_tools
command -v podman >/dev/null || { echo "SKIP: deploy/test-compose.sh: podman is not available"; exit 0; }
[ -x "$HOST_KV" ] || die "$HOST_KV missing: run 'make setup' first"
WORK=$(mktemp -d /tmp/kvstore-compose.XXXXXX)
trap on_exit EXIT
trap 'exit 130' INT TERM
# The cluster secret of both the compose nodes and the pods, and of the host's CLI (mode
# 644: the containers run as uid 10001 and read it through a bind mount).
"$HOST_KV" secret new >"$WORK/kvstore.key"
chmod 644 "$WORK/kvstore.key"
export KV_SECRET_HOST_FILE=$WORK/kvstore.key KV_SECRET_FILE=$WORK/kvstore.key

log "validate docker-compose.yml (docker-compose config)"
docker-compose -f "$COMPOSE_FILE" config -q || die "docker-compose.yml is not valid"

t=$SECONDS
build_base_image
TIMES[base]=$(since $t)

t=$SECONDS
build_image
TIMES[build]=$(since $t)

P1=$(free_port 7000)
P2=$(free_port 7001)
P3=$(free_port 7002)
export KV1_PORT=$P1 KV2_PORT=$P2 KV3_PORT=$P3
UP=1
teardown # leftovers of an interrupted run

t=$SECONDS
log "podman-compose up -d (host ports $P1 $P2 $P3)"
compose up -d --no-build kv1 kv2 kv3 >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "podman-compose up failed"; }
for s in kv1 kv2 kv3; do wait_healthy $s 90; done
TIMES[up]=$(since $t)
log "all three healthy in ${TIMES[up]} s"

# The ring must hold all three, its last change committed (a join's change still pending
# places keys on the old ring's two members), before quorum checks make sense.
deadline=$((SECONDS + 60))
until [ "$(hkv "$P1" cluster status --json 2>/dev/null | "$VENV_PY" -c \
  'import json,sys; d=json.load(sys.stdin); v=d["nodes"][d["view_of"]] or {}
print(sum(1 for m in d["members"] if m["up"]) if not v.get("pending", True) else "pending")' 2>/dev/null)" = 3 ]; do
  [ $SECONDS -lt $deadline ] || die "kv1 does not see 3 members up, its ring change done: $(hkv "$P1" cluster status 2>&1)"
  sleep 1
done
TIMES[ring]=$(since $t)

log "put/get from the host through the published ports"
hkv "$P1" put greeting hello || die "put through kv1's published port failed"
expect_value hello hkv "$P2" get greeting
expect_value hello hkv "$P3" get greeting

log "put/get from inside the containers, by service name"
podman exec "$(ctr kv2)" kv --node kv3:7000 put inside yes || die "put kv2 -> kv3:7000 failed"
expect_value yes podman exec "$(ctr kv3)" kv --node kv1:7000 get inside
expect_value yes hkv "$P1" get inside
# the documented one-liner (podman-compose 1.0 would rebuild the deps, hence --no-deps)
got=$(compose run --rm --no-deps -T kv kv get greeting 2>/dev/null | tr -d '\r' | grep -v '^exit code:' | tail -n 1)
[ "$got" = hello ] || die "'compose run --rm kv kv get greeting' printed '$got'"

log "SIGKILL kv3: reads and writes must still succeed (N=3, R=2, W=2)"
for i in $(seq 1 10); do hkv "$P1" put "before-$i" "v$i" || die "put before-$i failed"; done
t=$SECONDS
podman kill --signal KILL "$(ctr kv3)" >/dev/null
for i in $(seq 1 10); do
  hkv "$P1" put "during-$i" "d$i" || die "put during-$i with kv3 down failed"
  expect_value "d$i" hkv "$P2" get "during-$i"
  expect_value "v$i" hkv "$P2" get "before-$i"
done
# an overwrite that supersedes what a read saw (read context), so no sibling is left
ctx=$(hkv "$P2" get greeting --json | "$VENV_PY" -c 'import json,sys; print(json.load(sys.stdin)["context"])') ||
  die "get --json greeting failed"
hkv "$P2" put greeting "hello again" --context "$ctx" || die "overwrite with kv3 down failed"
expect_value "hello again" hkv "$P1" get greeting
TIMES[kill_ops]=$(since $t)

log "restart kv3: it must rejoin"
t=$SECONDS
podman start "$(ctr kv3)" >/dev/null 2>>"$WORK/podman.log"
wait_healthy kv3 90
# Rejoined = back in the ring as a replica: operations that need all three replicas pass.
deadline=$((SECONDS + 60))
attempt=0 # a fresh key per attempt: a retried put without context would add a sibling
until attempt=$((attempt + 1)) && hkv "$P3" put "rejoined-$attempt" yes -w 3 >"$WORK/last" 2>&1 &&
  hkv "$P1" get "rejoined-$attempt" -r 3 >"$WORK/last" 2>&1 && [ "$(cat "$WORK/last")" = yes ]; do
  [ $SECONDS -lt $deadline ] || die "kv3 did not rejoin: W=3/R=3 still fail after 60 s: $(cat "$WORK/last")"
  sleep 1
done
for i in $(seq 1 10); do
  expect_value "d$i" hkv "$P3" get "during-$i" -r 3
  expect_value "v$i" hkv "$P3" get "before-$i" -r 3
done
TIMES[rejoin]=$(since $t)

log "graceful stop of kv2 (SIGTERM through the init): exit 0, then it comes back"
t=$SECONDS
podman stop --time 30 "$(ctr kv2)" >/dev/null 2>>"$WORK/podman.log"
code=$(podman inspect --format '{{.State.ExitCode}}' "$(ctr kv2)")
TIMES[stop]=$(since $t)
[ "$code" = 0 ] || die "kv2 exited $code on SIGTERM, not 0"
[ "$(podman logs "$(ctr kv2)" 2>&1 | grep -c "stopped")" -ge 1 ] || die "kv2's log has no 'stopped' line"
expect_value "hello again" hkv "$P1" get greeting
podman start "$(ctr kv2)" >/dev/null 2>>"$WORK/podman.log"
wait_healthy kv2 90
expect_value "hello again" hkv "$P2" get greeting -r 3

log "down (podman-compose down -v)"
t=$SECONDS
teardown
TIMES[down]=$(since $t)

log "deploy/k8s: the StatefulSet's three pods, run by podman (read-only root, stable DNS names)"
t=$SECONDS
k8s_pods
TIMES[k8s]=$(since $t)
if [ "${KVSTORE_CI_KEEP:-0}" != 1 ]; then
  teardown
  UP=
fi

log "timing (s): base image ${TIMES[base]}, image build ${TIMES[build]}, up to healthy ${TIMES[up]}" \
  "(ring of 3 at ${TIMES[ring]}), kill + 10 writes/20 reads ${TIMES[kill_ops]}, restart to rejoined ${TIMES[rejoin]}," \
  "graceful stop ${TIMES[stop]}, down ${TIMES[down]}, k8s pods ${TIMES[k8s]}, total $(since "$T_START")"
echo "deploy/test-compose.sh: PASS (image build, compose up, put/get host+container, kill/rejoin, graceful stop, k8s pods)"
