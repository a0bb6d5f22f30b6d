#!/usr/bin/env bash
# The Palisade lab: a PBX, a LAN phone and an internet host in three network
# namespaces, with the agent enforcing its policy on the PBX.
#
#   sudo ./deploy/lab.sh                  build the agent, start the lab, stay in the
#                                         foreground; Ctrl-C stops and removes it
#   sudo ./deploy/lab.sh down             remove a lab (also one left behind)
#   sudo ./deploy/lab.sh agent ARGS...    run palisade-agent ARGS in the PBX namespace,
#                                         with the lab's config and state
#   sudo ./deploy/lab.sh probe FROM ADDR PORT/PROTO
#                                         connect from FROM (lan, inet or pbx) to
#                                         ADDR PORT/PROTO; exit 0 when it answers
#
# Nothing outside the namespaces is touched: the links are created from inside
# them (no interface ever appears in the root namespace), the agent's nft calls
# run in the PBX namespace, and the host's own firewall is never read or changed.
# It installs nothing; it needs root, iproute2, nftables, python3 and cargo.
#
# Environment:
#   PALISADE_AGENT     use this palisade-agent binary instead of building one
#   PALISADE_LAB_DIR   config and state of the lab (default /run/palisade-lab)
#   RUST_LOG           the agent's log filter (default info)

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$0
LAB=${PALISADE_LAB_DIR:-/run/palisade-lab}
# The lab directory is removed with `rm -rf`: refuse anything but a dedicated one.
case $LAB in
/*/*) ;;
*)
    echo "lab: error: PALISADE_LAB_DIR must be an absolute path below a directory, not '$LAB'" >&2
    exit 2
    ;;
esac

NS_PBX=pal-pbx
NS_LAN=pal-lan
NS_INET=pal-inet
NAMESPACES=("$NS_PBX" "$NS_LAN" "$NS_INET")

# pal-pbx lan0 <-> pal-lan eth0: the LAN, zone local in the policy.
PBX_LAN4=10.210.1.1
LAN4=10.210.1.2
PBX_LAN6=fd00:210:1::1
LAN6=fd00:210:1::2
# pal-pbx inet0 <-> pal-inet eth0: assigned to no zone, so zone internet.
PBX_INET4=10.210.2.1
INET4=10.210.2.2
PBX_INET6=fd00:210:2::1
INET6=fd00:210:2::2

# What the PBX namespace listens on: the ports of some catalogue services.
TCP_PORTS=(22 80 5060 8089)
UDP_PORTS=(4569 5060 10000)

# Listener and probe: answers every TCP connection with one line and echoes UDP.
IFS= read -r -d '' LAB_PY <<'PY' || true
import selectors, socket, sys

def peer_of(addr):
    a = addr[0]
    return a[7:] if a.startswith("::ffff:") else a

def bind(kind, port):
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        where = ("::", port)
    except OSError:
        s = socket.socket(socket.AF_INET, kind)
        where = ("0.0.0.0", port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(where)
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    s.setblocking(False)
    return s

def serve(tcp, udp):
    sel = selectors.DefaultSelector()
    for p in tcp:
        sel.register(bind(socket.SOCK_STREAM, p), selectors.EVENT_READ, ("tcp", p))
    for p in udp:
        sel.register(bind(socket.SOCK_DGRAM, p), selectors.EVENT_READ, ("udp", p))
    while True:
        for key, _ in sel.select():
            proto, port = key.data
            s = key.fileobj
            try:
                if proto == "tcp":
                    c, peer = s.accept()
                    c.settimeout(1)
                    c.sendall(f"palisade-lab {port}/tcp: hello {peer_of(peer)}\n".encode())
                    c.close()
                else:
                    data, peer = s.recvfrom(2048)
                    s.sendto(f"palisade-lab {port}/udp: echo ".encode() + data[:200], peer)
            except OSError:
                pass

def probe(addr, spec, timeout):
    port, proto = spec.split("/")
    port = int(port)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    s.settimeout(timeout)
    what = f"{addr} {port}/{proto}"
    try:
        if proto == "tcp":
            s.connect((addr, port))
            reply = s.recv(200)
        else:
            s.sendto(b"probe", (addr, port))
            reply, _ = s.recvfrom(2048)
    except socket.timeout:
        print(f"{what}: no answer within {timeout:g}s (dropped)")
        return 1
    except ConnectionRefusedError:
        print(f"{what}: refused (reachable, nothing listening)")
        return 2
    except OSError as e:
        print(f"{what}: {e.strerror or e}")
        return 3
    print(f"{what}: open -> {reply.decode(errors='replace').strip()}")
    return 0

if sys.argv[1] == "serve":
    serve([int(p) for p in sys.argv[2].split(",")], [int(p) for p in sys.argv[3].split(",")])
else:
    sys.exit(probe(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 2.0))
PY

log() { printf 'lab: %s\n' "$*" >&2; }
die() {
    printf 'lab: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

require_root() {
    [[ $EUID -eq 0 ]] || die "the lab creates network namespaces: run it as root (sudo $SELF${*:+ $*})"
}

require_tools() {
    local missing=() t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    ((${#missing[@]} == 0)) ||
        die "missing: ${missing[*]} (on Debian: apt-get install nftables iproute2 python3)"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

# Kills every process in a namespace, then deletes it.
remove_ns() {
    local ns=$1 pid i
    ns_exists "$ns" || return 0
    for i in 1 2 3; do
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] && break
        for pid in $pids; do
            kill "$([[ $i -lt 3 ]] && echo -TERM || echo -KILL)" "$pid" 2>/dev/null || true
        done
        sleep 0.5
    done
    ip netns del "$ns" 2>/dev/null || log "cannot delete namespace $ns"
}

# The pid of a lab.sh process that is running a lab, if any.
running_lab() {
    local pid
    [[ -r $LAB/lab.pid ]] || return 1
    pid=$(<"$LAB/lab.pid")
    [[ $pid =~ ^[0-9]+$ && $pid != "$$" && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'lab\.sh' || return 1
    echo "$pid"
}

# Stops a running lab (it tears itself down), then removes whatever is left.
down() {
    local pid i found=0
    if pid=$(running_lab); then
        found=1
        log "stopping the lab running as pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    local ns
    for ns in "${NAMESPACES[@]}"; do
        if ns_exists "$ns"; then
            found=1
            remove_ns "$ns"
        fi
    done
    rm -rf "$LAB"
    return $((found == 0))
}

# Builds the agent as the owner of the checkout, so target/ never gets root-owned
# files; sets AGENT.
build_agent() {
    if [[ -n ${PALISADE_AGENT:-} ]]; then
        AGENT=$(realpath "$PALISADE_AGENT")
        [[ -x $AGENT ]] || die "PALISADE_AGENT=$PALISADE_AGENT is not an executable"
        return
    fi
    local owner home
    owner=$(stat -c %U "$REPO")
    if [[ $owner != root && $owner != UNKNOWN ]] && command -v runuser >/dev/null 2>&1; then
        home=$(getent passwd "$owner" | cut -d: -f6)
        log "building the agent as $owner: cargo build -p palisade-agent"
        (cd "$REPO" && runuser -u "$owner" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" \
            cargo build -p palisade-agent) || die "the build failed"
    else
        if ! command -v cargo >/dev/null 2>&1; then
            local h
            for h in "$HOME" /root "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
                if [[ -n $h && -x $h/.cargo/bin/cargo ]]; then
                    PATH=$h/.cargo/bin:$PATH
                    [[ -n ${RUSTUP_HOME:-} || -d $HOME/.rustup || ! -d $h/.rustup ]] ||
                        export RUSTUP_HOME=$h/.rustup
                    break
                fi
            done
        fi
        command -v cargo >/dev/null 2>&1 ||
            die "cargo not found; install Rust, or point PALISADE_AGENT at a built palisade-agent"
        log "building the agent: cargo build -p palisade-agent"
        (cd "$REPO" && cargo build -p palisade-agent) || die "the build failed"
    fi
    AGENT=${CARGO_TARGET_DIR:-$REPO/target}/debug/palisade-agent
    [[ $AGENT == /* ]] || AGENT=$REPO/$AGENT
    [[ -x $AGENT ]] || die "no binary at $AGENT after the build"
}

# Writes a sysctl of namespace $1 without needing procps.
ns_sysctl() {
    ip netns exec "$1" sh -c "echo $3 > /proc/sys/$2" 2>/dev/null
}

new_ns() {
    local ns=$1
    ip netns add "$ns"
    if ns_sysctl "$ns" net/ipv6/conf/all/disable_ipv6 0; then
        ns_sysctl "$ns" net/ipv6/conf/default/disable_ipv6 0 || true
        ns_sysctl "$ns" net/ipv6/conf/all/accept_dad 0 || true
        ns_sysctl "$ns" net/ipv6/conf/default/accept_dad 0 || true
    else
        IPV6=0
    fi
    ip -n "$ns" link set lo up
}

# One link between the PBX and a peer namespace, created inside the PBX namespace.
link() {
    local pbx_if=$1 peer_ns=$2 pbx4=$3 peer4=$4 pbx6=$5 peer6=$6
    ip -n "$NS_PBX" link add "$pbx_if" type veth peer name eth0 netns "$peer_ns"
    ip -n "$NS_PBX" addr add "$pbx4/24" dev "$pbx_if"
    ip -n "$peer_ns" addr add "$peer4/24" dev eth0
    if ((IPV6)); then
        ip -n "$NS_PBX" addr add "$pbx6/64" dev "$pbx_if" nodad
        ip -n "$peer_ns" addr add "$peer6/64" dev eth0 nodad
    fi
    ip -n "$NS_PBX" link set "$pbx_if" up
    ip -n "$peer_ns" link set eth0 up
    ip -n "$peer_ns" route add default via "$pbx4"
    if ((IPV6)); then
        ip -n "$peer_ns" -6 route add default via "$pbx6"
    fi
}

write_config() {
    cat >"$LAB/agent.toml" <<EOF
# The lab's policy. Edit it, then reload the agent with
#   sudo kill -HUP \$(cat $LAB/agent.pid)
# or apply it with a rollback deadline:
#   sudo $SELF agent apply --confirm-within 1m $LAB/agent.toml
# The full list of options is in deploy/agent.toml.

[agent]
state_dir = "$LAB/state"
metrics_listen = "127.0.0.1:9464"   # inside $NS_PBX
check_interval = "10s"

# The agent reads this lab's demo Asterisk configuration (not the host's):
# edit $LAB/asterisk/pjsip.conf and watch \`$SELF agent show\` follow it.
[agent.discovery]
asterisk = "$LAB/asterisk"
freeswitch = "$LAB/absent"
kamailio = "$LAB/absent"

# The LAN phone's network is the local zone; the internet host is in no zone,
# so it is in zone internet.
[zones.local]
networks = ["10.210.1.0/24", "fd00:210:1::/64"]
EOF
    mkdir -p "$LAB/asterisk"
    cat >"$LAB/asterisk/pjsip.conf" <<EOF
; The lab PBX's PJSIP configuration: the agent opens what it needs from it.
[transport-udp]
type=transport
protocol=udp
bind=0.0.0.0:5060

[transport-tcp]
type=transport
protocol=tcp
bind=0.0.0.0:5060

; The internet host is this PBX's SIP trunk when it comes over IPv6.
[carrier]
type=endpoint
context=from-trunk
aors=carrier

[carrier]
type=aor
contact=sip:[$INET6]:5060

[carrier-identify]
type=identify
endpoint=carrier
match=$INET6
EOF
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    log "stopping and removing the lab"
    local pid
    for pid in "${AGENT_PID:-}" "${LISTENER_PID:-}"; do
        if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "${AGENT_PID:-}" "${LISTENER_PID:-}"; do
        if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
    done
    local ns
    for ns in "${NAMESPACES[@]}"; do
        remove_ns "$ns"
    done
    rm -rf "$LAB"
    log "lab removed"
    exit "$status"
}

try() {
    if [[ -n $2 ]]; then
        printf '  %-58s # %s\n' "$1" "$2"
    else
        printf '  %s\n' "$1"
    fi
}

smoke() {
    local from=$1 ns=$2 addr=$3 spec=$4 out
    out=$(ip netns exec "$ns" python3 "$LAB/lab.py" probe "$addr" "$spec" 1 || true)
    printf '  %-5s -> %s\n' "$from" "$out"
}

up() {
    require_root
    require_tools ip nft python3 setsid
    build_agent

    if down; then
        log "removed a lab left from an earlier run"
    fi
    mkdir -p "$LAB/state"
    chmod 0755 "$LAB"
    echo "$$" >"$LAB/lab.pid"
    echo "$AGENT" >"$LAB/agent.path"
    write_config
    printf '%s\n' "$LAB_PY" >"$LAB/lab.py"

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    IPV6=1
    local ns
    for ns in "${NAMESPACES[@]}"; do
        new_ns "$ns"
    done
    ((IPV6)) || log "IPv6 is not available in namespaces here: the lab runs IPv4 only"
    link lan0 "$NS_LAN" "$PBX_LAN4" "$LAN4" "$PBX_LAN6" "$LAN6"
    link inet0 "$NS_INET" "$PBX_INET4" "$INET4" "$PBX_INET6" "$INET6"

    local tcp udp
    tcp=$(IFS=,; echo "${TCP_PORTS[*]}")
    udp=$(IFS=,; echo "${UDP_PORTS[*]}")
    # Both run in their own session, so that Ctrl-C reaches only this script,
    # which then stops them in order. setsid and `ip netns exec` exec rather than
    # fork, so $! is the listener and the agent themselves.
    setsid ip netns exec "$NS_PBX" python3 "$LAB/lab.py" serve "$tcp" "$udp" &
    LISTENER_PID=$!

    setsid ip netns exec "$NS_PBX" env RUST_LOG="${RUST_LOG:-info}" \
        "$AGENT" --config "$LAB/agent.toml" run &
    AGENT_PID=$!
    echo "$AGENT_PID" >"$LAB/agent.pid"

    local i
    for i in $(seq 100); do
        ip netns exec "$NS_PBX" nft list table inet palisade >/dev/null 2>&1 && break
        kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited before loading its table"
        sleep 0.1
    done
    ip netns exec "$NS_PBX" nft list table inet palisade >/dev/null 2>&1 ||
        die "the agent did not load its table within 10s"

    local me="sudo $SELF"
    cat <<EOF

Palisade lab is up (config and state in $LAB).

  $NS_PBX   the PBX: palisade-agent (pid $AGENT_PID) and listeners on
             tcp ${TCP_PORTS[*]}, udp ${UDP_PORTS[*]}
             lan0 $PBX_LAN4 $PBX_LAN6, inet0 $PBX_INET4 $PBX_INET6
  $NS_LAN   a LAN phone, zone local:      $LAN4 $LAN6
  $NS_INET  an internet host, zone internet: $INET4 $INET6

Probes just now:
EOF
    smoke lan "$NS_LAN" "$PBX_LAN4" 22/tcp
    smoke inet "$NS_INET" "$PBX_INET4" 22/tcp
    smoke inet "$NS_INET" "$PBX_INET4" 5060/udp
    ((IPV6)) && smoke lan "$NS_LAN" "$PBX_LAN6" 80/tcp
    ((IPV6)) && smoke inet "$NS_INET" "$PBX_INET6" 80/tcp

    printf '\nTry, from another terminal:\n'
    try "$me agent show" "the live table: zones, services, sets, discovered facts"
    try "$me agent discover" "what the lab's pjsip.conf needs"
    try "$me agent explain $LAN4 22/tcp" "a LAN phone: ssh allowed"
    try "$me agent explain $INET4 22/tcp" "the internet host: dropped"
    ((IPV6)) && try "$me agent explain $INET6 5060/udp" "over IPv6 it is the trunk in pjsip.conf"
    try "$me probe inet $PBX_INET4 5060/udp" "SIP from the internet: open"
    try "$me agent set add ban $INET4 --timeout 10m --comment 'lab demo'" ""
    try "$me probe inet $PBX_INET4 5060/udp" "banned: dropped"
    try "$me agent explain $INET4 5060/udp" "why: the ban, its comment and time left"
    try "$me agent set del ban $INET4" ""
    try "sudo kill -HUP $AGENT_PID" "reload $LAB/agent.toml"
    try "sudo ip netns exec $NS_PBX nft list table inet palisade" ""
    try "sudo ip netns exec $NS_PBX nft delete table inet palisade" "repaired within 10s"
    try "sudo ip netns exec $NS_PBX curl -s 127.0.0.1:9464/metrics" "Prometheus metrics"
    cat <<EOF

'$me agent ARGS' runs: ip netns exec $NS_PBX $AGENT --config $LAB/agent.toml ARGS
Ctrl-C stops the lab and removes the namespaces; '$me down' removes a left-over lab.
EOF

    local status=0
    wait -n "$AGENT_PID" "$LISTENER_PID" || status=$?
    if ! kill -0 "$AGENT_PID" 2>/dev/null; then
        die "the agent exited (status $status)"
    fi
    die "the listener exited (status $status)"
}

cmd=${1:-up}
case $cmd in
up)
    up
    ;;
down)
    require_root "$@"
    if down; then
        log "lab removed"
    else
        log "no lab to remove"
    fi
    ;;
agent)
    shift
    require_root agent "$@"
    { ns_exists "$NS_PBX" && [[ -r $LAB/agent.path ]]; } || die "the lab is not running (start it with sudo $SELF)"
    exec ip netns exec "$NS_PBX" "$(<"$LAB/agent.path")" --config "$LAB/agent.toml" "$@"
    ;;
probe)
    shift
    require_root probe "$@"
    (($# == 3)) || die "usage: $SELF probe lan|inet|pbx ADDR PORT/PROTO"
    case $1 in
    lan) ns=$NS_LAN ;;
    inet) ns=$NS_INET ;;
    pbx) ns=$NS_PBX ;;
    *) die "probe from lan, inet or pbx, not '$1'" ;;
    esac
    [[ $3 =~ ^[0-9]+/(tcp|udp)$ ]] || die "'$3' should be PORT/PROTO, e.g. 5060/udp"
    ns_exists "$ns" || die "the lab is not running (start it with sudo $SELF)"
    exec ip netns exec "$ns" python3 -c "$LAB_PY" probe "$2" "$3"
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage >&2
    exit 2
    ;;
esac
