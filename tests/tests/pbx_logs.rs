//! End to end: the PBX's own log feeds the detectors.
//!
//! The registrar (Kamailio) writes one line per request it judged (`PAL ...
//! src=IP:PORT ... result=fail`); the agent follows that file with an
//! operator pattern. To show the log path alone at work, the policy takes
//! the registrar's port out of the packet path: the SIP services are moved to
//! an unused port and 5060 is opened as a plain service, as SIP over TLS or
//! IAX2 would be for the watch (it can neither read nor judge them).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use palisade_tests::{
    exclusive, phone_ua_crack_scenario, require_root_tools, require_sip_tools, standard_lab,
    AgentMode, Exclusive, Family, Rig, Sipp, ATTACKER, SIP_PORT,
};

fn preflight() -> Result<Exclusive> {
    let heavy = exclusive()?;
    require_root_tools()?;
    require_sip_tools()?;
    Ok(heavy)
}

/// SIP on 5060 unwatched, and the registrar's log followed.
const POLICY: &str = r#"
[[services]]
name = "sip-udp"
ports = ["5999/udp"]
zones = ["internet"]
voip = true

[[services]]
name = "sip-tcp"
ports = ["5999/tcp"]
zones = ["internet"]
voip = true

[[services]]
name = "pbx-unwatched"
ports = ["5060/udp", "5060/tcp"]
zones = ["internet"]

[agent.pbx_logs]
start = "end"

[[agent.pbx_logs.kamailio]]
path = "@REGISTRAR_LOG@"
pattern = "method=REGISTER src=<ip>:<port> proto=udp user=<user> auth=yes result=fail"
kind = "auth-failed"
"#;

/// Password guessing that only the registrar's log reveals is banned, and
/// the ban holds the rest of the attack off.
#[test]
fn guessing_seen_only_in_the_registrar_log_is_banned() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("plog")?;
    let rig = Rig::start_with(&lab, AgentMode::Running, POLICY)?;
    let agent_log = || rig.diagnostics();
    let attacker: IpAddr = Family::V4.addr(rig.client(ATTACKER));

    // 400 guesses at svcrack's pace (~2 s of traffic), with a phone's UA.
    let out = phone_ua_crack_scenario(&rig, Family::V4, 400, 180.0)?;
    eprintln!(
        "log path: {} of 400 guesses reached the registrar, banned after {:?}",
        out.guesses_reached, out.ban_after
    );
    let ban = rig.ban_of(attacker)?;
    let ban = ban.unwrap_or_else(|| {
        panic!(
            "not banned; {} guesses reached\n{out:#?}\n{}",
            out.guesses_reached,
            agent_log()
        )
    });
    let comment = ban.comment.clone().unwrap_or_default();
    assert!(
        comment.contains("password-guessing"),
        "reason: {comment}\n{}",
        agent_log()
    );
    // The log is read every 200 ms: a fraction of a second of guesses gets in,
    // not the attack.
    assert!(
        out.guesses_reached <= 150,
        "{} guesses reached before the log-based ban\n{}",
        out.guesses_reached,
        agent_log()
    );
    assert!(
        out.guesses_reached >= 3,
        "the guesses did reach the registrar"
    );
    Ok(())
}

/// A client that writes the log pattern, with someone else's address, into a
/// field it controls (its User-Agent, which the registrar logs after the
/// source) never gets that address banned: the line is ambiguous and refused.
#[test]
fn an_address_injected_through_the_user_agent_is_never_banned() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("plogi")?;
    let rig = Rig::start_with(&lab, AgentMode::Running, POLICY)?;
    let attacker = rig.client(ATTACKER);
    let (src, dst) = (Family::V4.addr(attacker), Family::V4.pbx(attacker));
    let victim: IpAddr = "10.200.9.9".parse()?;
    let forged =
        format!("x method=REGISTER src={victim}:5060 proto=udp user=300 auth=yes result=fail");
    Sipp::guesses(
        std::net::SocketAddr::new(src, SIP_PORT),
        std::net::SocketAddr::new(dst, SIP_PORT),
        "300",
        "123456",
        20.0,
        20,
    )
    .user_agent(&forged)
    .run(&attacker.ns, rig.dir())?;
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        rig.ban_of(victim)?.is_none(),
        "an innocent address was banned from a forged log line\n{}",
        rig.diagnostics()
    );
    Ok(())
}
