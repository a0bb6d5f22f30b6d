#!/usr/bin/env bash
# The Palisade lab: the controller and two sites of one tenant, a phone and an
# attacker, each in its own network namespace.
#
#   sudo ./deploy/lab.sh                  build, start the controller and the lab, print
#                                         what to try, stay in the foreground showing the
#                                         agents' and the controller's logs; Ctrl-C stops
#                                         and removes everything
#   sudo ./deploy/lab.sh down             remove a lab (also one left behind)
#   sudo ./deploy/lab.sh agent [hq|branch] ARGS...
#                                         run palisade-agent ARGS at a site (default hq),
#                                         with that site's config and state
#   sudo ./deploy/lab.sh palisade ARGS... run the operator CLI against the lab's controller
#   sudo ./deploy/lab.sh attack [N]       svcrack (N passwords, default 2000) from the
#                                         attacker against hq: when the ban is in force at
#                                         hq, and when it reaches branch
#   sudo ./deploy/lab.sh register [USER [PASSWORD]]
#                                         register a phone at hq with sipp (default 300 and
#                                         its password; a wrong password fails)
#   sudo ./deploy/lab.sh probe FROM ADDR PORT/PROTO
#                                         connect from FROM (phone, attacker, hq, branch or
#                                         wan) to ADDR PORT/PROTO; exit 0 when it answers
#
# The lab, tenant acme:
#
#   pal-wan       the internet between the others (it routes); palisade-controller on
#                 10.210.0.1:7443 with its sled store and CA under the lab directory
#   pal-hq        site hq's PBX: Kamailio as registrar (users 300, 301, 333) and
#                 palisade-agent enrolled as acme/hq/pbx-hq; wan0 10.210.1.2, lan0 10.210.10.1
#   pal-branch    site branch's PBX: Kamailio and palisade-agent enrolled as
#                 acme/branch/pbx-branch; wan0 10.210.2.2
#   pal-phone     a desk phone on hq's LAN (zone local there); 10.210.10.2
#   pal-attacker  somebody on the internet; 10.210.3.2
#
# IPv6 too where the kernel allows it (fd00:210:N::/64). Kamailio, sipp and
# SIPVicious are optional: what is missing is said, and the lab runs without it
# (without Kamailio a stub listener answers on 5060 and nothing registers).
#
# Nothing outside the namespaces is touched: the links are created from inside
# them (no interface ever appears in the root namespace), every address and
# route is inside a namespace made here, nft runs only in those, and the host's
# own firewall is never read or changed. It installs nothing; it needs root,
# iproute2, nftables, python3 and cargo.
#
# Environment:
#   PALISADE_BIN_DIR   use palisade-agent, palisade-controller and palisade from this
#                      directory instead of building them
#   PALISADE_LAB_DIR   config, state, logs and the controller's data (default
#                      /run/palisade-lab; removed with the lab)
#   RUST_LOG           the agents' and the controller's log filter (default info)

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

HELPER=$REPO/deploy/lab/lab.py
# The registrar and the phone are the end-to-end tests' own (tests/src/sip.rs).
REGISTRAR_CFG=$REPO/tests/sip/registrar.cfg
REGISTER_XML=$REPO/tests/sip/register.xml

NS_WAN="pal-wan"
NS_HQ="pal-hq"
NS_BRANCH="pal-branch"
NS_PHONE="pal-phone"
NS_ATTACKER="pal-attacker"
NAMESPACES=("$NS_WAN" "$NS_HQ" "$NS_BRANCH" "$NS_PHONE" "$NS_ATTACKER")
# The namespaces of the lab before the controller, removed by `down` and `up`.
OLD_NAMESPACES=(pal-pbx pal-lan pal-inet)

TENANT=acme
SITES=(hq branch)
declare -A SITE_NS=([hq]=$NS_HQ [branch]=$NS_BRANCH)

# The controller: on pal-wan's loopback, reached by every namespace through its route.
CTL4=10.210.0.1
CTL_PORT=7443
URL=https://$CTL4:$CTL_PORT
# pal-wan hq0 <-> pal-hq wan0
WAN_HQ4=10.210.1.1 WAN_HQ6=fd00:210:1::1
HQ4=10.210.1.2 HQ6=fd00:210:1::2
# pal-wan branch0 <-> pal-branch wan0
WAN_BRANCH4=10.210.2.1 WAN_BRANCH6=fd00:210:2::1
BRANCH4=10.210.2.2 BRANCH6=fd00:210:2::2
# pal-wan attacker0 <-> pal-attacker eth0
WAN_ATTACKER4=10.210.3.1 WAN_ATTACKER6=fd00:210:3::1
ATTACKER4=10.210.3.2 ATTACKER6=fd00:210:3::2
# pal-hq lan0 <-> pal-phone eth0: hq's LAN, zone local in hq's policy.
HQ_LAN4=10.210.10.1 HQ_LAN6=fd00:210:10::1
PHONE4=10.210.10.2 PHONE6=fd00:210:10::2
PHONE_NET4=10.210.10.0/24 PHONE_NET6=fd00:210:10::/64

# The registrar's users, as in the end-to-end tests (tests/src/sip.rs USERS).
USERS=(300 301 333)
declare -A PASSWORD=([300]=Tr0ub4dor-300 [301]=c0rrect-h0rse-301 [333]=b4ttery-st4ple-333)
REALM=palisade.lab
PHONE_UA="Yealink SIP-T46S 66.86.0.15"

# What each PBX namespace listens on besides SIP: ports of some catalogue services.
TCP_PORTS=(22 80 8089)
UDP_PORTS=(4569 10000)

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
        die "missing: ${missing[*]} (on Debian: apt-get install nftables iproute2 python3 util-linux coreutils)"
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

# Kills every process in a namespace, then deletes it.
remove_ns() {
    local ns=$1 pid i
    ns_exists "$ns" || return 0
    for i in 1 2 3 4; do
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $pids ]] && break
        for pid in $pids; do
            kill "$([[ $i -lt 4 ]] && echo -TERM || echo -KILL)" "$pid" 2>/dev/null || true
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
# Returns 1 when there was nothing to remove.
down() {
    local pid i found=0
    if pid=$(running_lab); then
        found=1
        log "stopping the lab running as pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 75); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    local ns
    for ns in "${NAMESPACES[@]}" "${OLD_NAMESPACES[@]}"; do
        if ns_exists "$ns"; then
            found=1
            remove_ns "$ns"
        fi
    done
    [[ -e $LAB ]] && found=1
    rm -rf "$LAB"
    return $((found == 0))
}

# Puts cargo on PATH when sudo left it out.
find_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    local h
    for h in "$HOME" /root "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)"; do
        if [[ -n $h && -x $h/.cargo/bin/cargo ]]; then
            PATH=$h/.cargo/bin:$PATH
            [[ -n ${RUSTUP_HOME:-} || -d $HOME/.rustup || ! -d $h/.rustup ]] ||
                export RUSTUP_HOME=$h/.rustup
            return 0
        fi
    done
    return 1
}

# Builds the agent and the controller (debug, like the tests) as the owner of
# the checkout, so target/ never gets root-owned files; sets BIN.
build() {
    local names=(palisade-agent palisade-controller palisade) n
    if [[ -n ${PALISADE_BIN_DIR:-} ]]; then
        BIN=$(realpath "$PALISADE_BIN_DIR")
    else
        local owner home cmd=(cargo build -p palisade-agent -p palisade-controller)
        owner=$(stat -c %U "$REPO")
        if [[ $owner != root && $owner != UNKNOWN ]] && command -v runuser >/dev/null 2>&1; then
            home=$(getent passwd "$owner" | cut -d: -f6)
            log "building as $owner: ${cmd[*]}"
            (cd "$REPO" && runuser -u "$owner" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" \
                "${cmd[@]}") || die "the build failed"
        else
            find_cargo ||
                die "cargo not found; install Rust, or point PALISADE_BIN_DIR at built binaries"
            log "building: ${cmd[*]}"
            (cd "$REPO" && "${cmd[@]}") || die "the build failed"
        fi
        BIN=${CARGO_TARGET_DIR:-$REPO/target}/debug
        [[ $BIN == /* ]] || BIN=$REPO/$BIN
    fi
    for n in "${names[@]}"; do
        [[ -x $BIN/$n ]] || die "no $n in $BIN"
    done
}

# BIN of the running lab, for the subcommands.
lab_bin() {
    [[ -r $LAB/bin ]] || die "the lab is not running (start it with sudo $SELF)"
    BIN=$(<"$LAB/bin")
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

# One veth link, created inside namespace $1; the far end gets a default route
# via the near end when $9 is "route".
link() {
    local a=$1 a_if=$2 a4=$3 a6=$4 b=$5 b_if=$6 b4=$7 b6=$8 route=${9:-}
    ip -n "$a" link add "$a_if" type veth peer name "$b_if" netns "$b"
    ip -n "$a" addr add "$a4/24" dev "$a_if"
    ip -n "$b" addr add "$b4/24" dev "$b_if"
    if ((IPV6)); then
        ip -n "$a" addr add "$a6/64" dev "$a_if" nodad
        ip -n "$b" addr add "$b6/64" dev "$b_if" nodad
    fi
    ip -n "$a" link set "$a_if" up
    ip -n "$b" link set "$b_if" up
    if [[ $route == route ]]; then
        ip -n "$b" route add default via "$a4"
        if ((IPV6)); then
            ip -n "$b" -6 route add default via "$a6"
        fi
    fi
}

# The addresses a site's PBX has (and its registrar listens on).
site_addrs() {
    case $1 in
    hq) echo "$HQ4 $HQ_LAN4" ;;
    branch) echo "$BRANCH4" ;;
    esac
    if ((IPV6)); then
        case $1 in
        hq) echo "$HQ6 $HQ_LAN6" ;;
        branch) echo "$BRANCH6" ;;
        esac
    fi
}

# Starts a command in a namespace in its own session, so that Ctrl-C reaches
# only this script, which then stops it in order. setsid and `ip netns exec`
# exec rather than fork, so $! is the command itself. Output goes to file $2.
spawn() {
    local ns=$1 out=$2
    shift 2
    setsid ip netns exec "$ns" "$@" </dev/null >>"$out" 2>&1 &
}

# Kamailio as the site's registrar, with the tests' config (tests/sip/registrar.cfg).
start_registrar() {
    local site=$1 ns=${SITE_NS[$1]} dir=$LAB/$1 modules addr proto
    modules=$(compgen -G '/usr/lib/*/kamailio/modules' | head -n1 || true)
    [[ -n $modules ]] || modules=/usr/lib/kamailio/modules
    mkdir -p "$dir/kamailio" "$dir/kamailio-run"
    # Only the config and the address list in this directory: the agent's
    # discovery reads and watches it.
    printf '# group address netmask port tag\n' >"$dir/kamailio/address.list"
    local listen="" users="" user cfg
    for addr in $(site_addrs "$site"); do
        [[ $addr == *:* ]] && addr="[$addr]"
        for proto in udp tcp; do
            listen+="listen=$proto:$addr:5060"$'\n'
        done
    done
    for user in "${USERS[@]}"; do
        users+=$'\t'"\$sht(users=>$user) = \"${PASSWORD[$user]}\";"$'\n'
    done
    cfg=$(<"$REGISTRAR_CFG")
    cfg=${cfg//"@LISTEN@"/"$listen"}
    cfg=${cfg//"@USERS@"/"${users%$'\n'}"}
    cfg=${cfg//"@REALM@"/"$REALM"}
    cfg=${cfg//"@MODULES@"/"$modules/"}
    cfg=${cfg//"@CHILDREN@"/2}
    cfg=${cfg//"@ADDRESS_FILE@"/"$dir/kamailio/address.list"}
    printf '%s\n' "$cfg" >"$dir/kamailio/kamailio.cfg"
    spawn "$ns" "$dir/kamailio.log" kamailio -f "$dir/kamailio/kamailio.cfg" -DD -E \
        -Y "$dir/kamailio-run" -P "$dir/kamailio.pid" -m 64 -M 8
    PIDS+=($!)
    NAMES[$!]="kamailio at $site"
    local first i
    first=$(site_addrs "$site" | head -n1 | cut -d' ' -f1)
    for i in $(seq 50); do
        ip netns exec "$ns" python3 "$HELPER" options "$first" 0.2 >/dev/null 2>&1 && return 0
        kill -0 "$!" 2>/dev/null ||
            die "kamailio at $site exited; $dir/kamailio.log ends with:
$(tail -n 20 "$dir/kamailio.log")"
    done
    die "kamailio at $site did not answer within 10s; $dir/kamailio.log ends with:
$(tail -n 20 "$dir/kamailio.log")"
}

start_listener() {
    local site=$1 tcp udp
    tcp=("${TCP_PORTS[@]}")
    udp=("${UDP_PORTS[@]}")
    if ((!HAVE_KAMAILIO)); then
        tcp+=(5060)
        udp+=(5060)
    fi
    spawn "${SITE_NS[$site]}" "$LAB/$site/listener.log" python3 "$HELPER" serve \
        "$(IFS=,; echo "${tcp[*]}")" "$(IFS=,; echo "${udp[*]}")"
    PIDS+=($!)
    NAMES[$!]="the listener at $site"
}

write_agent_config() {
    local site=$1 dir=$LAB/$1
    mkdir -p "$dir/state" "$dir/absent"
    {
        cat <<EOF
# Site $site's agent. Edit it, then reload the agent with
#   sudo kill -HUP \$(cat $dir/agent.pid)
# or apply it with a rollback deadline:
#   sudo $SELF agent $site apply --confirm-within 1m $dir/agent.toml
# The full list of options is in deploy/agent.toml. While the controller pushes
# no policy for the site, this file's policy is the one in force.

[agent]
state_dir = "$dir/state"
metrics_listen = "127.0.0.1:9464"   # inside ${SITE_NS[$site]}
check_interval = "10s"

# The agent reads this site's registrar configuration, not the host's.
[agent.discovery]
EOF
        if ((HAVE_KAMAILIO)); then
            printf 'kamailio = "%s"\nasterisk = "%s"\n' "$dir/kamailio" "$dir/absent"
        else
            printf 'kamailio = "%s"\nasterisk = "%s"\n' "$dir/absent" "$dir/asterisk"
        fi
        printf 'freeswitch = "%s"\n' "$dir/absent"
        if [[ $site == hq ]]; then
            cat <<EOF

# hq's LAN (the phone) is the local zone; everyone else is in zone internet,
# except the tenant's other sites, which the controller makes trusted peers.
[zones.local]
networks = ["$PHONE_NET4", "$PHONE_NET6"]
EOF
        fi
    } >"$dir/agent.toml"
    if ((!HAVE_KAMAILIO)); then
        mkdir -p "$dir/asterisk"
        cat >"$dir/asterisk/pjsip.conf" <<EOF
; Without Kamailio, the agent reads this stub PBX configuration instead.
[transport-udp]
type=transport
protocol=udp
bind=0.0.0.0:5060

[transport-tcp]
type=transport
protocol=tcp
bind=0.0.0.0:5060
EOF
    fi
}

# The operator CLI against the lab's controller, from pal-wan.
operator() {
    ip netns exec "$NS_WAN" "$BIN/palisade" --controller "$URL" --cert "$LAB/operator.pem" "$@"
}

agent_cli() {
    local site=$1
    shift
    ip netns exec "${SITE_NS[$site]}" "$BIN/palisade-agent" --config "$LAB/$site/agent.toml" "$@"
}

start_controller() {
    mkdir -p "$LAB/controller"
    "$BIN/palisade-controller" operator-cert --data "$LAB/controller" --name lab \
        --out "$LAB/operator.pem" >"$LAB/controller.log" 2>&1 ||
        die "palisade-controller operator-cert failed: $(<"$LAB/controller.log")"
    spawn "$NS_WAN" "$LAB/controller.log" env RUST_LOG="${RUST_LOG:-info}" \
        "$BIN/palisade-controller" run --data "$LAB/controller" --listen "0.0.0.0:$CTL_PORT" \
        --name "$CTL4" --url "$URL" --metrics-listen "127.0.0.1:9465"
    CONTROLLER_PID=$!
    PIDS+=($!)
    NAMES[$!]="the controller"
    local i
    for i in $(seq 150); do
        operator tenants >/dev/null 2>&1 && return 0
        kill -0 "$CONTROLLER_PID" 2>/dev/null ||
            die "the controller exited; $LAB/controller.log ends with:
$(tail -n 20 "$LAB/controller.log")"
        sleep 0.1
    done
    die "the controller did not answer within 15s; $LAB/controller.log ends with:
$(tail -n 20 "$LAB/controller.log")"
}

# Enrols a site's agent with a fresh token, then starts its daemon.
start_agent() {
    local site=$1 ns=${SITE_NS[$1]} dir=$LAB/$1 token out
    token=$(operator token create --tenant "$TENANT" --site "$site" --valid 10m 2>/dev/null) ||
        die "palisade token create --tenant $TENANT --site $site failed: $(operator token create --tenant "$TENANT" --site "$site" 2>&1 >/dev/null)"
    out=$(agent_cli "$site" enroll --token "$token" --hostname "pbx-$site" 2>&1) ||
        die "palisade-agent enroll at $site failed: $out"
    log "$site: $out"
    spawn "$ns" "$dir/agent.log" env RUST_LOG="${RUST_LOG:-info}" \
        "$BIN/palisade-agent" --config "$dir/agent.toml" run
    PIDS+=($!)
    NAMES[$!]="the agent at $site"
    echo "$!" >"$dir/agent.pid"
    local pid=$! i
    for i in $(seq 100); do
        ip netns exec "$ns" nft list table inet palisade >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null ||
            die "the agent at $site exited before loading its table; $dir/agent.log ends with:
$(tail -n 20 "$dir/agent.log")"
        sleep 0.1
    done
    die "the agent at $site did not load its table within 10s"
}

# Waits until every site's agent holds a sync stream with the controller.
wait_connected() {
    local i out
    for i in $(seq 150); do
        out=$(operator hosts --tenant "$TENANT" 2>/dev/null || true)
        if [[ $(grep -c $'\tconnected\t' <<<"$out") -ge ${#SITES[@]} ]]; then
            return 0
        fi
        sleep 0.1
    done
    log "not every agent is connected after 15s:"
    printf '%s\n' "$out" >&2
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    log "stopping and removing the lab"
    local pid
    for pid in "${VIEWERS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # The agents first (their rulesets stay, and go with their namespaces),
    # then the registrars, listeners and the controller.
    for pid in "${PIDS[@]}"; do
        if [[ ${NAMES[$pid]:-} == "the agent at"* ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}" "${VIEWERS[@]}"; do
        wait "$pid" 2>/dev/null || true
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
    if [[ -n ${2:-} ]]; then
        printf '  %s\n      # %s\n' "$1" "$2"
    else
        printf '  %s\n' "$1"
    fi
}

smoke() {
    local from=$1 ns=$2 addr=$3 spec=$4 out
    if [[ $spec == sip ]]; then
        out=$(ip netns exec "$ns" python3 "$HELPER" options "$addr" 1 || true)
    else
        out=$(ip netns exec "$ns" python3 "$HELPER" probe "$addr" "$spec" 1 || true)
    fi
    printf '  %-8s -> %s\n' "$from" "$out"
}

# The sipp command line that registers USER with PASSWORD from the phone.
register_cmd() {
    local user=$1 pass=$2 sipp
    sipp=$(command -v sipp || echo sipp)
    shell_words ip netns exec "$NS_PHONE" "$sipp" -sf "$REGISTER_XML" -t u1 -i "$PHONE4" -p 5062 \
        -s "$user" -au "$user" -ap "$pass" -key ua "$PHONE_UA" -key expires 600 \
        -m 1 -recv_timeout 4000 -default_behaviors all,-bye -nostdin "$HQ_LAN4:5060"
}

register() {
    local user=${1:-300} pass out status=0
    pass=${2:-${PASSWORD[$user]:-}}
    [[ -n $pass ]] || die "no password for user $user (the users are ${USERS[*]})"
    command -v sipp >/dev/null 2>&1 || die "sipp is not installed (apt-get install sip-tester)"
    ns_exists "$NS_PHONE" || die "the lab is not running (start it with sudo $SELF)"
    mkdir -p "$LAB/phone"
    local cmd
    cmd=$(register_cmd "$user" "$pass")
    out=$(cd "$LAB/phone" && eval "timeout -k 5 20 $cmd" 2>&1) || status=$?
    if ((status == 0)); then
        echo "phone $PHONE4: registered $user at hq ($HQ_LAN4:5060), expires in 600s"
    else
        local why
        why=$(grep -o "received '[^']*" <<<"$out" | head -n1 | sed "s/^received '//")
        echo "phone $PHONE4: registering $user at hq failed (sipp exit $status): ${why:-no answer}"
    fi
    return "$status"
}

has_elem() { # NS SET ADDR
    ip netns exec "$1" nft list set inet palisade "$2" 2>/dev/null | grep -qw -- "$3"
}

show_elem() { # NS SET ADDR
    ip netns exec "$1" nft list set inet palisade "$2" 2>/dev/null |
        grep -o -- "$3[^,}]*" | head -n1 | sed 's/^/      /'
}

now() { date +%s.%N; }

# Prints its arguments as one shell command line, quoting only what needs it.
shell_words() {
    local a out=()
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+=("$a")
        else
            out+=("'${a//\'/\'\\\'\'}'")
        fi
    done
    printf '%s' "${out[*]}"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

svcrack_cmd() {
    local dict=$1 svcrack
    svcrack=$(command -v sipvicious_svcrack || echo sipvicious_svcrack)
    shell_words ip netns exec "$NS_ATTACKER" "$svcrack" -u 300 -d "$dict" \
        -x "$ATTACKER4" -b "$ATTACKER4" -P 5060 -p 5060 --maximumtime 5 "$HQ4"
}

attack() {
    local n=${1:-2000}
    [[ $n =~ ^[0-9]+$ ]] || die "usage: $SELF attack [PASSWORDS]"
    command -v sipvicious_svcrack >/dev/null 2>&1 ||
        die "sipvicious_svcrack is not installed (python3 -m pip install sipvicious==0.3.8)"
    ns_exists "$NS_ATTACKER" || die "the lab is not running (start it with sudo $SELF)"
    mkdir -p "$LAB/attacker"
    local dict=$LAB/attacker/dictionary.txt
    seq 100000 $((100000 + n - 1)) >"$dict"
    if has_elem "$NS_HQ" ban_v4 "$ATTACKER4"; then
        echo "$ATTACKER4 is banned at hq already; lift it first:"
        echo "  sudo $SELF palisade ban lift --tenant $TENANT $ATTACKER4"
        echo "  sudo $SELF agent hq unban $ATTACKER4"
        return 1
    fi
    local cmd t0 t_hq="" t_branch="" t_end="" pid
    cmd=$(svcrack_cmd "$dict")
    echo "attacker $ATTACKER4: svcrack against user 300 at hq ($HQ4), $n passwords:"
    echo "  $cmd"
    t0=$(now)
    (cd "$LAB/attacker" && eval "timeout -k 5 $((n / 50 + 60)) $cmd" >"$LAB/attacker/svcrack.log" 2>&1) &
    pid=$!
    while [[ -z $t_hq || -z $t_branch ]]; do
        if [[ -z $t_hq ]] && has_elem "$NS_HQ" ban_v4 "$ATTACKER4"; then
            t_hq=$(now)
        fi
        if [[ -z $t_branch ]] && has_elem "$NS_BRANCH" ban_shared_v4 "$ATTACKER4"; then
            t_branch=$(now)
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            # svcrack is done: give the ban and its fan-out 5 s more at most.
            [[ -n $t_end ]] || t_end=$(now)
            (($(awk -v a="$t_end" -v b="$(now)" 'BEGIN { print (b - a > 5) }'))) && break
        fi
        sleep 0.02
    done
    if [[ -n $t_hq ]]; then
        echo "banned at hq after $(elapsed "$t0" "$t_hq")s (in ban_v4):"
        show_elem "$NS_HQ" ban_v4 "$ATTACKER4"
    else
        echo "not banned at hq"
    fi
    if [[ -n $t_branch ]]; then
        local lag
        lag=$(awk -v a="${t_hq:-$t0}" -v b="$t_branch" 'BEGIN { printf "%d", (b - a) * 1000 }')
        echo "in branch's kernel ${lag} ms later (in ban_shared_v4, polled every ~50 ms):"
        show_elem "$NS_BRANCH" ban_shared_v4 "$ATTACKER4"
    else
        echo "not at branch"
    fi
    echo "svcrack is still running (it stops after 5 s without answers, then waits 10 s)..."
    wait "$pid" || true
    if grep -q '| 300' "$LAB/attacker/svcrack.log"; then
        echo "svcrack found a password:"
        grep '| 300' "$LAB/attacker/svcrack.log"
    else
        echo "svcrack found nothing; its output ends with:"
        tail -n 3 "$LAB/attacker/svcrack.log" | sed 's/^/  /'
    fi
    [[ -n $t_hq && -n $t_branch ]]
}

up() {
    require_root
    require_tools ip nft python3 setsid timeout
    build

    if down; then
        log "removed a lab left from an earlier run"
    fi
    HAVE_KAMAILIO=0 HAVE_SIPP=0 HAVE_SVCRACK=0
    command -v kamailio >/dev/null 2>&1 && HAVE_KAMAILIO=1
    command -v sipp >/dev/null 2>&1 && HAVE_SIPP=1
    command -v sipvicious_svcrack >/dev/null 2>&1 && HAVE_SVCRACK=1
    ((HAVE_KAMAILIO)) || log "kamailio is not installed (apt-get install kamailio): the PBXs run" \
        "WITHOUT a registrar (a stub listener answers on 5060); nothing can register," \
        "and svcrack finds nothing to judge"
    ((HAVE_SIPP)) || log "sipp is not installed (apt-get install sip-tester): no phone registration"
    ((HAVE_SVCRACK)) || log "sipvicious_svcrack is not installed" \
        "(python3 -m pip install sipvicious==0.3.8): no password-guessing demo"

    mkdir -p "$LAB/phone" "$LAB/attacker"
    chmod 0755 "$LAB"
    echo "$$" >"$LAB/lab.pid"
    echo "$BIN" >"$LAB/bin"

    PIDS=() VIEWERS=()
    declare -gA NAMES=()
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    IPV6=1
    local ns site
    for ns in "${NAMESPACES[@]}"; do
        new_ns "$ns"
    done
    ((IPV6)) || log "IPv6 is not available in namespaces here: the lab runs IPv4 only"
    link "$NS_WAN" hq0 "$WAN_HQ4" "$WAN_HQ6" "$NS_HQ" wan0 "$HQ4" "$HQ6" route
    link "$NS_WAN" branch0 "$WAN_BRANCH4" "$WAN_BRANCH6" "$NS_BRANCH" wan0 "$BRANCH4" "$BRANCH6" route
    link "$NS_WAN" attacker0 "$WAN_ATTACKER4" "$WAN_ATTACKER6" "$NS_ATTACKER" eth0 \
        "$ATTACKER4" "$ATTACKER6" route
    link "$NS_HQ" lan0 "$HQ_LAN4" "$HQ_LAN6" "$NS_PHONE" eth0 "$PHONE4" "$PHONE6" route
    ip -n "$NS_WAN" addr add "$CTL4/32" dev lo
    ns_sysctl "$NS_WAN" net/ipv4/ip_forward 1
    ((IPV6)) && ns_sysctl "$NS_WAN" net/ipv6/conf/all/forwarding 1

    log "starting the controller in $NS_WAN at $URL (data in $LAB/controller)"
    start_controller

    for site in "${SITES[@]}"; do
        mkdir -p "$LAB/$site"
        write_agent_config "$site"
        if ((HAVE_KAMAILIO)); then
            log "$site: starting Kamailio (registrar, users ${USERS[*]})"
            start_registrar "$site"
        fi
        start_listener "$site"
    done
    for site in "${SITES[@]}"; do
        log "$site: enrolling and starting the agent"
        start_agent "$site"
    done
    wait_connected

    local me="sudo $SELF"
    cat <<EOF

Palisade lab is up: tenant $TENANT, sites ${SITES[*]} (config, state and logs in $LAB).

  $NS_WAN       the internet; palisade-controller (pid $CONTROLLER_PID) at $URL
  $NS_HQ        site hq's PBX: $( ((HAVE_KAMAILIO)) && echo "Kamailio (users ${USERS[*]}), " )palisade-agent
                 wan0 $HQ4 $( ((IPV6)) && echo "$HQ6" ), lan0 $HQ_LAN4 $( ((IPV6)) && echo "$HQ_LAN6" )
  $NS_BRANCH    site branch's PBX: $( ((HAVE_KAMAILIO)) && echo "Kamailio, " )palisade-agent
                 wan0 $BRANCH4 $( ((IPV6)) && echo "$BRANCH6" )
  $NS_PHONE     a phone on hq's LAN (zone local): $PHONE4 $( ((IPV6)) && echo "$PHONE6" )
  $NS_ATTACKER  an attacker on the internet: $ATTACKER4 $( ((IPV6)) && echo "$ATTACKER6" )

palisade hosts --tenant $TENANT:
EOF
    local hosts
    hosts=$(operator hosts --tenant "$TENANT" 2>&1 || true)
    if command -v column >/dev/null 2>&1; then
        hosts=$(column -t -s $'\t' <<<"$hosts")
    fi
    printf '%s\n' "$hosts" | sed 's/^/  /'

    printf '\nProbes just now:\n'
    smoke phone "$NS_PHONE" "$HQ_LAN4" 22/tcp
    smoke attacker "$NS_ATTACKER" "$HQ4" 22/tcp
    smoke branch "$NS_BRANCH" "$HQ4" 22/tcp
    if ((HAVE_KAMAILIO)); then
        smoke attacker "$NS_ATTACKER" "$HQ4" sip
    else
        smoke attacker "$NS_ATTACKER" "$HQ4" 5060/udp
    fi
    if ((HAVE_KAMAILIO && HAVE_SIPP)); then
        printf '  %-8s -> ' phone
        register 300 | sed "s/^phone $PHONE4: //" || true
    fi

    local pal="$me palisade" dict=$LAB/attacker/dictionary.txt
    printf '\nTry, from another terminal:\n\n'
    if ((HAVE_SVCRACK && HAVE_KAMAILIO)); then
        try "$me attack" "svcrack from the attacker against hq: banned at hq, and the ban in branch's kernel within 1 s"
        try "sudo watch -n 0.2 ip netns exec $NS_BRANCH nft list set inet palisade ban_shared_v4" \
            "meanwhile: the shared bans as branch's kernel has them"
        try "sudo ip netns exec $NS_HQ nft list set inet palisade ban_v4" "hq's own bans"
        try "sudo sh -c 'seq 100000 101999 > $dict'; sudo $(svcrack_cmd "$dict")" \
            "the attack by hand (dictionary: 2000 wrong passwords)"
        printf '\n'
    elif ((!HAVE_SVCRACK)); then
        printf '  (install SIPVicious for the attack: python3 -m pip install sipvicious==0.3.8)\n\n'
    else
        printf '  (the attack needs Kamailio as the registrar: apt-get install kamailio)\n\n'
    fi
    try "$pal hosts --tenant $TENANT" "the sites' agents: connected, last seen, addresses"
    try "$pal bans --tenant $TENANT" "the tenant's bans: reason, origin, evidence"
    try "$pal ban add --tenant $TENANT 192.0.2.66 --reason demo --for 10m" "a ban from the operator: at both sites at once"
    try "$pal explain --tenant $TENANT $ATTACKER4 5060/udp" "why the attacker is dropped (or not), at every site"
    try "$pal events --tenant $TENANT" "the tenant's events as they happen (bans, lifts, registrations, hosts); Ctrl-C ends"
    try "$pal ban lift --tenant $TENANT $ATTACKER4" "lift a ban everywhere, the site that proved it included"
    try "$pal users set --tenant $TENANT 300=ucp 301=ucp,webrtc 333=admin,ssh" "per-user rules for every site: opened where the extension registers"
    try "$pal audit --tenant $TENANT" ""
    printf '\n'
    try "$me agent hq explain $ATTACKER4 5060/udp" "the same question asked at one site"
    try "$me agent branch explain $HQ4 22/tcp" "hq is a trusted peer at branch (the controller told it)"
    try "$me agent hq explain $PHONE4 22/tcp" "the phone is in hq's local zone"
    try "$me agent hq show" "hq's live table, its sets and what it discovered from $( ((HAVE_KAMAILIO)) && echo Kamailio || echo the stub pjsip.conf)"
    try "sudo ip netns exec $NS_HQ nft list set inet palisade tenant_peer_v4" "branch's addresses, trusted at hq"
    printf '\n'
    if ((HAVE_SIPP && HAVE_KAMAILIO)); then
        try "$me register 301" "register phone 301 at hq (sipp, from $NS_PHONE)"
        try "$me register 300 wrong-password" "a phone with a wrong password"
        try "sudo ip netns exec $NS_HQ nft list set inet palisade known_good_v4" "registered phones: let through whatever their zone"
        try "sudo $(register_cmd 333 "${PASSWORD[333]}")" "the registration by hand"
        printf '  passwords: %s\n' "$(for u in "${USERS[@]}"; do printf '%s=%s ' "$u" "${PASSWORD[$u]}"; done)"
    elif ((!HAVE_SIPP)); then
        printf '  (install sipp to register a phone: apt-get install sip-tester)\n'
    else
        printf '  (registering a phone needs Kamailio as the registrar: apt-get install kamailio)\n'
    fi
    cat <<EOF

'$me agent SITE ARGS' runs: ip netns exec pal-SITE $BIN/palisade-agent --config $LAB/SITE/agent.toml ARGS
'$me palisade ARGS' runs:   ip netns exec $NS_WAN $BIN/palisade --controller $URL --cert $LAB/operator.pem ARGS
Logs: $LAB/{controller.log,hq/agent.log,branch/agent.log$( ((HAVE_KAMAILIO)) && echo ",hq/kamailio.log" )}; the first three follow here.
Ctrl-C stops the lab and removes everything; '$me down' removes a left-over lab.

EOF

    # Follow the agents' and the controller's logs here, each line tagged.
    local file tag
    for tag in controller hq branch; do
        case $tag in
        controller) file=$LAB/controller.log ;;
        *) file=$LAB/$tag/agent.log ;;
        esac
        tail -n 0 -F "$file" 2>/dev/null > >(sed -u "s/^/$(printf '%-10s' "$tag") | /") &
        VIEWERS+=($!)
    done

    local status=0 pid
    wait -n "${PIDS[@]}" || status=$?
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "${NAMES[$pid]} exited (status $status)"
    done
    die "a lab process exited (status $status)"
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
    site=hq
    if [[ ${1:-} == hq || ${1:-} == branch ]]; then
        site=$1
        shift
    fi
    lab_bin
    ns_exists "${SITE_NS[$site]}" || die "the lab is not running (start it with sudo $SELF)"
    exec ip netns exec "${SITE_NS[$site]}" "$BIN/palisade-agent" --config "$LAB/$site/agent.toml" "$@"
    ;;
palisade)
    shift
    require_root palisade "$@"
    lab_bin
    ns_exists "$NS_WAN" || die "the lab is not running (start it with sudo $SELF)"
    exec ip netns exec "$NS_WAN" "$BIN/palisade" --controller "$URL" --cert "$LAB/operator.pem" "$@"
    ;;
attack)
    shift
    require_root attack "$@"
    attack "$@"
    ;;
register)
    shift
    require_root register "$@"
    register "$@"
    ;;
probe)
    shift
    require_root probe "$@"
    (($# == 3)) || die "usage: $SELF probe phone|attacker|hq|branch|wan ADDR PORT/PROTO"
    case $1 in
    phone | lan) ns=$NS_PHONE ;;
    attacker | inet) ns=$NS_ATTACKER ;;
    hq | pbx) ns=$NS_HQ ;;
    branch) ns=$NS_BRANCH ;;
    wan) ns=$NS_WAN ;;
    *) die "probe from phone, attacker, hq, branch or wan, not '$1'" ;;
    esac
    [[ $3 =~ ^[0-9]+/(tcp|udp)$ ]] || die "'$3' should be PORT/PROTO, e.g. 5060/udp"
    ns_exists "$ns" || die "the lab is not running (start it with sudo $SELF)"
    exec ip netns exec "$ns" python3 "$HELPER" probe "$2" "$3"
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage >&2
    exit 2
    ;;
esac
