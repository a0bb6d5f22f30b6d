//! End-to-end test harness for Palisade: real hosts in Linux network
//! namespaces.
//!
//! A firewall agent can only be tested honestly against a real kernel: the
//! questions are "does this packet from that host reach this port", "does a
//! cut apply to a flow that conntrack already knows", "does the ruleset
//! survive an agent killed with SIGKILL". This crate builds small, disposable
//! networks for such tests out of network namespaces and veth pairs, so that
//! nothing — no interface, no address, no nftables table — ever touches the
//! network namespace of the machine running the tests.
//!
//! The pieces:
//!
//! * [`Netns`] — a namespace with a unique name, deleted together with every
//!   process in it when dropped (also when a test panics); it runs commands
//!   ([`Netns::run`], [`Netns::nft`]), spawns long-running processes
//!   ([`Netns::spawn`] → [`ChildGuard`]) and runs Rust closures inside it
//!   ([`Netns::enter`]).
//! * [`veth`] — a point-to-point link between two namespaces.
//! * [`Listener`] — dual-stack TCP and UDP servers that stand in for the PBX's
//!   services (TCP accepts and closes, UDP echoes).
//! * [`probe`], [`probe_all`], [`UdpFlow`] — the client side: "does this
//!   connection get through?".
//! * [`Lab`] — a ready-made PBX with one client namespace per zone.
//! * [`Dnsmasq`], [`ResolvConf`], [`resolve`] — a real DNS server in a
//!   namespace, and the per-namespace `resolv.conf` that programs started
//!   with `ip netns exec` resolve through.
//!
//! Everything needs root (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`); tests call
//! [`require_root_tools`] first so that a missing privilege or tool fails
//! loudly with an explanation instead of silently skipping.
//!
//! ```no_run
//! use palisade_tests::{probe, require_root_tools, Lab, Listener, Proto};
//! use std::net::SocketAddr;
//! use std::time::Duration;
//!
//! # fn main() -> anyhow::Result<()> {
//! require_root_tools()?;
//! let lab = Lab::new("doc", &[("office", "z-office")])?;
//! let _sip = Listener::start(&lab.pbx, &[(Proto::Udp, 5060)])?;
//! let office = lab.client("office");
//! let target = SocketAddr::new(office.pbx_v4.into(), 5060);
//! assert!(probe(&office.ns, Proto::Udp, target, Duration::from_secs(1)));
//! # Ok(())
//! # }
//! ```
//!
//! Tests in one process run on parallel threads; every type here is safe to
//! use that way, and namespace names are unique per process and per run.

mod agent;
mod dns;
mod host;
mod lab;
mod link;
mod listener;
mod netns;
mod probe;
mod sip;

pub use agent::{structure, table_json, AgentHost};
pub use dns::{require_dns_tools, resolve, Dnsmasq, ResolvConf};
pub use host::{require_root_tools, workspace_bin};
pub use lab::{Client, Lab};
pub use link::{add_address, veth, wait_ipv6_ready};
pub use listener::{Listener, Proto};
pub use netns::{cleanup_stale_namespaces, netns_names, ChildGuard, Netns};
pub use probe::{probe, probe_all, ProbeSpec, UdpFlow, PROBE_PARALLELISM};
pub use sip::{
    ban_of, exclusive, flood_scenario, grant_elements, guess_flood_scenario, known_good_of,
    options_ping, password, phone_ua_crack_scenario, require_sip_tools, scan_scenario,
    set_elements, standard_lab, svcrack, svcrack_scenario, svmap, svwar, uri_host,
    wrong_password_phone_scenario, wrong_passwords, AgentMode, Attempt, CrackOutcome, CrackReport,
    Exclusive, Family, FloodOutcome, GrantElement, MapReport, Meter, MeterReading, PhoneOutcome,
    PhonePlan, Registrar, Rig, RigOptions, ScanOutcome, SetElement, SetEvent, SetWatch, SipRequest,
    SipTransport, Sipp, SippScenario, SippStats, ToolRun, WarReport, ATTACKER, METER_TABLE, PHONE,
    PHONE_UA, REALM, SCANNER_UA, SIP_PORT, USERS,
};

/// Re-exported so tests can signal a [`ChildGuard`] without depending on
/// `nix` themselves.
pub use nix::sys::signal::Signal;
