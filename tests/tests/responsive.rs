//! End to end: the responsive firewall against real attack tools.
//!
//! Each test builds a lab (PBX, phone host, attacker host), starts Kamailio
//! as the registrar, nft counters before and after the firewall, and the
//! real agent daemon with the default policy (SIP open to the internet
//! zone, where both hosts are), then runs one scenario of the issue and
//! checks Palisade's bound on it. The registrar's log says how many
//! password guesses were judged, the counters how many packets got
//! through, the agent's sets who is banned and why.
//!
//! The scenarios are heavy and some long (the wrong-password phone runs for
//! over three minutes, as in the field), so they take [`exclusive`] and run
//! one at a time; every tool runs under a time bound.
//!
//! `harness_baseline_without_the_agent` runs without the agent and proves
//! the harness itself: there, every guess reaches the registrar.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use palisade_tests::{
    exclusive, flood_scenario, guess_flood_scenario, options_ping, password,
    phone_ua_crack_scenario, require_root_tools, require_sip_tools, scan_scenario, standard_lab,
    svcrack, svcrack_scenario, wrong_password_phone_scenario, wrong_passwords, AgentMode,
    CrackOutcome, Exclusive, Family, PhonePlan, Rig, Signal, SipTransport, Sipp, ATTACKER, PHONE,
    SIP_PORT,
};

/// Passwords svcrack tries in the scenario.
const DICTIONARY: usize = 2000;
/// Floods: 2,000 requests per second for 20 s.
const FLOOD_RATE: f64 = 2000.0;
const FLOOD_FOR: Duration = Duration::from_secs(20);

fn preflight() -> Result<Exclusive> {
    let heavy = exclusive()?;
    require_root_tools()?;
    require_sip_tools()?;
    Ok(heavy)
}

/// The bound of the svcrack rows: at most `max_guesses` judged by the
/// registrar, the meter agreeing (svcrack needs one challenge to start and
/// every refused guess brings the next challenge, so a few unauthenticated
/// REGISTERs come on top of the guesses), and the attacker banned with a
/// reason.
fn assert_crack_stopped(rig: &Rig, out: &CrackOutcome, max_guesses: usize) {
    let context = || format!("{out:#?}\n{}", rig.diagnostics());
    assert!(
        out.cracked.is_none(),
        "a wrong dictionary cracked nothing\n{}",
        context()
    );
    assert!(
        out.guesses_reached <= max_guesses,
        "{} guesses reached the registrar (bound {max_guesses})\n{}",
        out.guesses_reached,
        context()
    );
    let max_packets = 2 * max_guesses as u64 + 2;
    assert!(
        out.passed <= max_packets,
        "{} SIP packets of the attacker got through (bound {max_packets})\n{}",
        out.passed,
        context()
    );
    let ban = out.ban.as_ref();
    assert!(
        ban.is_some_and(|b| b.comment.as_deref().is_some_and(|c| !c.trim().is_empty())),
        "the attacker must be banned, with a reason: {ban:?}\n{}",
        context()
    );
}

#[test]
fn harness_baseline_without_the_agent() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("sipbase")?;
    let rig = Rig::start(&lab, AgentMode::Absent)?;
    let phone = lab.client(PHONE);
    let attacker = lab.client(ATTACKER);

    // A phone registers, over IPv4 and IPv6.
    for family in [Family::V4, Family::V6] {
        let stats = Sipp::phone(
            SocketAddr::new(family.addr(phone), 5062),
            SocketAddr::new(family.pbx(phone), SIP_PORT),
            "301",
            password("301"),
        )
        .repeat(3, 10.0)
        .run(&phone.ns, rig.dir())?;
        assert_eq!(
            stats.successful,
            3,
            "{family:?}: {stats:?}\n{}",
            rig.diagnostics()
        );
    }
    assert_eq!(rig.registrar.successes("301")?, 6);

    // Every one of svcrack's guesses reaches the registrar, and the meter
    // counts every packet twice: arrived, and passed.
    let out = svcrack_scenario(&rig, Family::V4, 50)?;
    assert_eq!(out.guesses_reached, 50, "{out:#?}\n{}", rig.diagnostics());
    assert!(out.arrived >= 51 && out.passed == out.arrived, "{out:#?}");
    assert!(out.ban.is_none() && out.cracked.is_none(), "{out:#?}");

    // With the right password in its dictionary svcrack finds it: the
    // registrar's digest check is real.
    let mut dictionary = wrong_passwords(5);
    dictionary.push(password("333").to_owned());
    let found = svcrack(
        &attacker.ns,
        rig.dir(),
        attacker.v6.into(),
        attacker.pbx_v6.into(),
        "333",
        &dictionary,
        Duration::from_secs(2),
    )?;
    assert_eq!(
        found.found.as_deref(),
        Some(password("333")),
        "{}",
        found.run.tail(10)
    );

    // A short flood is answered in full.
    let flood = flood_scenario(&rig, 200.0, Duration::from_secs(2), 5.0)?;
    assert_eq!(flood.flood.created, 400, "{flood:#?}");
    assert_eq!(flood.flood.successful, 400, "{flood:#?}");
    assert_eq!(flood.requests_reached, 400, "{flood:#?}");
    let phone_stats = flood.phone.as_ref().expect("phone ran");
    assert_eq!(phone_stats.successful, phone_stats.created, "{flood:#?}");
    Ok(())
}

#[test]
fn svcrack_2000_passwords_at_most_3_guesses_reach_the_registrar() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("crack4")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let out = svcrack_scenario(&rig, Family::V4, DICTIONARY)?;
    assert_crack_stopped(&rig, &out, 3);
    Ok(())
}

#[test]
fn svcrack_over_ipv6_at_most_3_guesses_reach_the_registrar() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("crack6")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let out = svcrack_scenario(&rig, Family::V6, DICTIONARY)?;
    assert_crack_stopped(&rig, &out, 3);
    assert!(out.attacker.is_ipv6());
    Ok(())
}

#[test]
fn guessing_with_a_phone_user_agent_at_most_5_guesses_reach_the_registrar() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("crackua")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    // svcrack 0.3.8 cannot change its User-Agent: SIPp guesses at its pace.
    let out = phone_ua_crack_scenario(&rig, Family::V4, DICTIONARY as u64, 180.0)?;
    assert_crack_stopped(&rig, &out, 5);
    Ok(())
}

#[test]
fn svmap_then_svwar_find_no_extension() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("scan")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let out = scan_scenario(&rig)?;
    assert!(
        out.extensions.is_empty(),
        "svwar found {:?}\n{out:#?}\n{}",
        out.extensions,
        rig.diagnostics()
    );
    Ok(())
}

#[test]
fn a_phone_with_a_wrong_password_is_never_banned_and_registers_once_fixed() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("wrongpw")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let out = wrong_password_phone_scenario(&rig, PhonePlan::default())?;
    assert_phone_spared(&rig, &out);
    Ok(())
}

#[test]
fn a_second_phone_behind_the_same_address_keeps_registering() -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab("twophones")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let plan = PhonePlan {
        second_phone: true,
        ..PhonePlan::default()
    };
    let out = wrong_password_phone_scenario(&rig, plan)?;
    let failed: Vec<_> = out.second.iter().filter(|a| !a.registered).collect();
    assert!(
        out.second.len() >= 18 && failed.is_empty(),
        "phone 301 must register at every attempt; failed: {failed:?}\n{out:#?}\n{}",
        rig.diagnostics()
    );
    assert_phone_spared(&rig, &out);
    Ok(())
}

/// The wrong-password rows: the phone's address is never banned, and the
/// first or second attempt with the right password registers.
fn assert_phone_spared(rig: &Rig, out: &palisade_tests::PhoneOutcome) {
    assert!(
        out.attempts.iter().filter(|a| !a.right_password).count() >= 18,
        "the phone kept its wrong password for 3 minutes: {out:#?}"
    );
    assert!(
        out.banned_at.is_none() && out.ban.is_none(),
        "the phone's address was banned (at {:?}): {:?}\n{}",
        out.banned_at,
        out.ban,
        rig.diagnostics()
    );
    let recovered = out.attempts_to_recover();
    assert!(
        recovered.is_some_and(|n| n <= 2),
        "with the right password the phone must register within one retry; \
         took {recovered:?} attempts\n{out:#?}\n{}",
        rig.diagnostics()
    );
}

#[test]
fn register_flood_without_credentials_at_most_5_percent_reach_and_the_phone_registers() -> Result<()>
{
    let _heavy = preflight()?;
    let lab = standard_lab("flood")?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let out = flood_scenario(&rig, FLOOD_RATE, FLOOD_FOR, 5.0)?;
    let context = || format!("{out:#?}\n{}", rig.diagnostics());
    assert!(
        out.flood.created >= 39_000,
        "the flood ran at full rate\n{}",
        context()
    );
    assert!(
        out.reached_percent() <= 5.0,
        "{} of {} flood requests ({:.1} %) reached the registrar\n{}",
        out.requests_reached,
        out.flood.created,
        out.reached_percent(),
        context()
    );
    let phone = out.phone.as_ref().expect("the phone ran");
    assert!(
        phone.created == 100 && phone.successful == 100,
        "the phone must register every time: {} of {}\n{}",
        phone.successful,
        phone.created,
        context()
    );
    Ok(())
}

fn wrong_credential_flood(tag: &str, transport: SipTransport) -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab(tag)?;
    let rig = Rig::start(&lab, AgentMode::Running)?;
    let out = guess_flood_scenario(&rig, transport, FLOOD_RATE, FLOOD_FOR)?;
    assert!(
        out.guesses_reached <= 5,
        "{} guesses over {transport:?} reached the registrar (bound 5)\n{out:#?}\n{}",
        out.guesses_reached,
        rig.diagnostics()
    );
    Ok(())
}

#[test]
fn wrong_credential_flood_over_udp_at_most_5_guesses_reach() -> Result<()> {
    wrong_credential_flood("guessudp", SipTransport::Udp)
}

#[test]
fn wrong_credential_flood_over_one_tcp_connection_at_most_5_guesses_reach() -> Result<()> {
    wrong_credential_flood("guesstcp", SipTransport::Tcp)
}

/// svcrack gets the attacker banned; then the agent stops with `signal`:
/// the ban stays in the kernel and the attacker stays cut off.
fn ban_outlives_the_agent(tag: &str, signal: Signal) -> Result<()> {
    let _heavy = preflight()?;
    let lab = standard_lab(tag)?;
    let mut rig = Rig::start(&lab, AgentMode::Running)?;
    let attacker = lab.client(ATTACKER);
    let ip: IpAddr = attacker.v4.into();
    let out = svcrack_scenario(&rig, Family::V4, 300)?;
    let ban = out.ban.clone();
    assert!(
        ban.is_some(),
        "svcrack got no ban\n{out:#?}\n{}",
        rig.diagnostics()
    );

    let exited = rig.stop_agent(signal)?;
    assert!(exited, "the agent did not exit on {signal}");
    let after = rig.ban_of(ip)?;
    assert!(
        after.as_ref().map(|b| &b.value) == ban.as_ref().map(|b| &b.value),
        "the ban must outlive the agent ({signal}): before {ban:?}, after {after:?}"
    );
    let before = rig.registrar.requests_from(ip)?.len();
    let answered = options_ping(
        &attacker.ns,
        ip,
        SocketAddr::new(attacker.pbx_v4.into(), SIP_PORT),
        Duration::from_millis(500),
    )?;
    assert!(
        !answered,
        "the banned attacker got an answer after {signal}"
    );
    assert_eq!(rig.registrar.requests_from(ip)?.len(), before);
    Ok(())
}

#[test]
fn a_ban_outlives_the_agent_stopped_with_sigterm() -> Result<()> {
    ban_outlives_the_agent("banterm", Signal::SIGTERM)
}

#[test]
fn a_ban_outlives_the_agent_killed_with_sigkill() -> Result<()> {
    ban_outlives_the_agent("bankill", Signal::SIGKILL)
}
