//! The responsive firewall against real attack tools, one run per scenario,
//! printed as the issue's comparison table with Palisade's column measured.
//!
//! ```sh
//! cargo build --release -p palisade-agent       # the bench runs this binary
//! sudo cargo bench -p palisade-tests --bench responsive
//! sudo cargo bench -p palisade-tests --bench responsive -- svcrack flood
//! sudo PALISADE_BENCH_BASELINE=1 cargo bench -p palisade-tests --bench responsive
//! ```
//!
//! Each scenario gets a fresh lab (PBX, phone host, attacker host), the
//! Kamailio registrar and the nft meter, and, unless
//! `PALISADE_BENCH_BASELINE=1`, the agent daemon with the default policy;
//! the baseline shows what the same tools achieve with no firewall at all.
//! Arguments that do not start with `-` select rows by key (`svcrack`,
//! `ua`, `scan`, `wrongpw`, `twophones`, `flood`, `guessflood`). The other
//! tools' columns are copied from the issue, not measured here. It runs as
//! root, in namespaces only, and takes about ten minutes (the two phone
//! scenarios last over three minutes each, as in the field).

use std::time::{Duration, Instant};

use anyhow::Result;
use palisade_tests::{
    exclusive, flood_scenario, guess_flood_scenario, phone_ua_crack_scenario, require_root_tools,
    require_sip_tools, scan_scenario, standard_lab, svcrack_scenario,
    wrong_password_phone_scenario, AgentMode, CrackOutcome, Family, PhoneOutcome, PhonePlan, Rig,
    SetElement, SipRequest, SipTransport,
};

const BASELINE_VAR: &str = "PALISADE_BENCH_BASELINE";

/// One row of the table: the scenario as the issue words it, the other
/// tools' results as the issue reports them, and how to measure Palisade's.
struct Row {
    key: &'static str,
    scenario: &'static str,
    fail2ban: &'static str,
    crowdsec: &'static str,
    freepbx: &'static str,
    run: fn(AgentMode) -> Result<Measured>,
}

/// Palisade's cell, and the numbers behind it.
struct Measured {
    cell: String,
    detail: String,
}

const ROWS: [Row; 7] = [
    Row {
        key: "svcrack",
        scenario: "svcrack, 2,000 wrong passwords for 300",
        fail2ban: "10–12 guesses reach the registrar; 140–152 in a third of runs",
        crowdsec: "~1,240 (bouncer polls every 10 s)",
        freepbx: "2,000 (9 for a returning address)",
        run: run_svcrack,
    },
    Row {
        key: "ua",
        scenario: "same with a normal phone's User-Agent",
        fail2ban: "same",
        crowdsec: "same",
        freepbx: "same",
        run: run_phone_ua,
    },
    Row {
        key: "scan",
        scenario: "svmap then svwar 100–999",
        fail2ban: "no ban; all 3 extensions found",
        crowdsec: "—",
        freepbx: "all 3 found",
        run: run_scan,
    },
    Row {
        key: "wrongpw",
        scenario: "phone 300 with wrong password retrying every 10 s for 3 min, then fixed",
        fail2ban: "banned at +40 s; right password refused for 10 min",
        crowdsec: "—",
        freepbx: "free for 90 s, then 1 attempt in 6 rejected; right password refused at +170 s; \
                  the address dropped for 24 h from ~+390 s",
        run: run_wrong_password,
    },
    Row {
        key: "twophones",
        scenario: "same, while a second phone (301, same address, other port) stays registered \
                   with re-registrations",
        fail2ban: "whole address banned",
        crowdsec: "—",
        freepbx: "limits are per address (not measured)",
        run: run_two_phones,
    },
    Row {
        key: "flood",
        scenario: "REGISTER flood without credentials 2,000/s for 20 s from the attacker while a \
                   phone (other host) registers 5/s",
        fail2ban: "40,000 answered, no ban",
        crowdsec: "—",
        freepbx: "40,000 answered (10 for a returning address)",
        run: run_flood,
    },
    Row {
        key: "guessflood",
        scenario: "REGISTER flood with wrong credentials 2,000/s, over UDP and over one TCP \
                   connection",
        fail2ban: "~200 guesses reach the registrar",
        crowdsec: "—",
        freepbx: "40,000 (2 returning; all 40,000 over one TCP connection)",
        run: run_guess_flood,
    },
];

fn main() -> Result<()> {
    require_root_tools()?;
    require_sip_tools()?;
    let mode = AgentMode::from_env(BASELINE_VAR);
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |row: &Row| filters.is_empty() || filters.iter().any(|f| f == row.key);

    eprintln!(
        "palisade responsive bench (nproc={} kernel={} agent: {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        match mode {
            AgentMode::Running => "running, default policy",
            AgentMode::Absent => "absent (baseline)",
        }
    );
    let mut cells = Vec::new();
    let mut details = Vec::new();
    for row in ROWS.iter() {
        if !selected(row) {
            cells.push("(not run)".to_owned());
            continue;
        }
        eprintln!("running {} ...", row.key);
        // Timed from when the lock is held: another run of the scenarios
        // (a test suite, say) may hold it first.
        let (result, took) = {
            let _heavy = exclusive()?;
            let t0 = Instant::now();
            ((row.run)(mode), t0.elapsed())
        };
        match result {
            Ok(m) => {
                eprintln!("  {} ({:.0} s)", m.cell, took.as_secs_f64());
                cells.push(m.cell);
                details.push(format!(
                    "- {} ({:.0} s): {}",
                    row.key,
                    took.as_secs_f64(),
                    m.detail
                ));
            }
            Err(e) => {
                eprintln!("  failed: {e:#}");
                cells.push("(failed to run)".to_owned());
                details.push(format!("- {}: failed to run: {e:#}", row.key));
            }
        }
    }

    let palisade = match mode {
        AgentMode::Running => "Palisade",
        AgentMode::Absent => "no firewall (baseline)",
    };
    println!();
    println!("| scenario | fail2ban | CrowdSec | FreePBX RFW | {palisade} |");
    println!("|---|---|---|---|---|");
    for (row, cell) in ROWS.iter().zip(&cells) {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.scenario, row.fail2ban, row.crowdsec, row.freepbx, cell
        );
    }
    println!();
    println!("Measured:");
    for line in details {
        println!("{line}");
    }
    Ok(())
}

/// 40000 → "40,000".
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn ban_text(ban: &Option<SetElement>, after: Option<Duration>) -> String {
    match (ban, after) {
        (Some(_), Some(after)) => format!("banned after {}", ms(after)),
        (Some(_), None) => "banned".to_owned(),
        (None, _) => "no ban".to_owned(),
    }
}

fn reason(ban: &Option<SetElement>) -> String {
    ban.as_ref()
        .and_then(|b| b.comment.clone())
        .map_or_else(String::new, |c| format!(" (\"{c}\")"))
}

fn crack_cell(out: &CrackOutcome) -> Measured {
    let cell = format!(
        "{} guesses reached; {}",
        count(out.guesses_reached as u64),
        ban_text(&out.ban, out.ban_after)
    );
    let mut detail = format!(
        "{} passwords; {} guesses and {} requests reached the registrar; meter: {} packets \
         arrived, {} passed; {}{}; cracked: {:?}; tool ran {:.1} s",
        out.passwords,
        out.guesses_reached,
        out.requests_reached,
        out.arrived,
        out.passed,
        ban_text(&out.ban, out.ban_after),
        reason(&out.ban),
        out.cracked,
        out.elapsed.as_secs_f64()
    );
    if std::env::var_os("PALISADE_BENCH_TRACE").is_some() {
        detail.push_str(&timeline(&out.requests));
    }
    Measured { cell, detail }
}

/// The requests that reached the registrar, relative to the first: what to
/// read when a bound is missed (`PALISADE_BENCH_TRACE=1`).
fn timeline(requests: &[SipRequest]) -> String {
    let Some(first) = requests.first() else {
        return String::new();
    };
    requests
        .iter()
        .map(|r| {
            let at = r.at.duration_since(first.at).unwrap_or_default();
            format!(
                "\n    +{:>7.1} ms {} {} {} auth={} {}",
                at.as_secs_f64() * 1e3,
                r.method,
                r.src,
                r.user,
                r.auth,
                r.result
            )
        })
        .collect()
}

fn run_svcrack(mode: AgentMode) -> Result<Measured> {
    let lab = standard_lab("bcrack")?;
    let rig = Rig::start(&lab, mode)?;
    Ok(crack_cell(&svcrack_scenario(&rig, Family::V4, 2000)?))
}

fn run_phone_ua(mode: AgentMode) -> Result<Measured> {
    let lab = standard_lab("bua")?;
    let rig = Rig::start(&lab, mode)?;
    let mut m = crack_cell(&phone_ua_crack_scenario(&rig, Family::V4, 2000, 180.0)?);
    if std::env::var_os("PALISADE_BENCH_TRACE").is_some() {
        eprintln!("{}", rig.diagnostics());
    }
    m.detail
        .push_str(" (SIPp at svcrack's pace: svcrack 0.3.8 cannot set its User-Agent)");
    Ok(m)
}

fn run_scan(mode: AgentMode) -> Result<Measured> {
    let lab = standard_lab("bscan")?;
    let rig = Rig::start(&lab, mode)?;
    let out = scan_scenario(&rig)?;
    let found: Vec<&str> = out.extensions.iter().map(|(e, _)| e.as_str()).collect();
    let cell = format!(
        "{}; {}",
        if found.is_empty() {
            "no extension found".to_owned()
        } else {
            format!("{} found ({})", found.len(), found.join(", "))
        },
        ban_text(&out.ban, out.ban_after)
    );
    let detail = format!(
        "svmap devices {:?}; svwar extensions {:?}; {} requests reached the registrar; meter: \
         {} arrived, {} passed; {}{}",
        out.devices,
        out.extensions,
        out.requests_reached,
        out.arrived,
        out.passed,
        ban_text(&out.ban, out.ban_after),
        reason(&out.ban)
    );
    Ok(Measured { cell, detail })
}

fn phone_story(out: &PhoneOutcome) -> String {
    let wrong = out.attempts.iter().filter(|a| !a.right_password).count();
    let banned = match out.banned_at {
        Some(at) => format!("banned at +{:.0} s", at.as_secs_f64()),
        None => "never banned".to_owned(),
    };
    let recovered = match out.attempts_to_recover() {
        Some(1) => "registered at the first attempt with the right password".to_owned(),
        Some(n) => format!("registered at attempt {n} with the right password"),
        None => "the right password was refused".to_owned(),
    };
    format!("{wrong} wrong attempts; {banned}; {recovered}")
}

fn run_wrong_password(mode: AgentMode) -> Result<Measured> {
    let lab = standard_lab("bwrongpw")?;
    let rig = Rig::start(&lab, mode)?;
    let out = wrong_password_phone_scenario(&rig, PhonePlan::default())?;
    Ok(Measured {
        cell: phone_story(&out),
        detail: format!(
            "{}; ban {:?}; known-good {:?}",
            phone_story(&out),
            out.ban,
            out.known_good
        ),
    })
}

fn run_two_phones(mode: AgentMode) -> Result<Measured> {
    let lab = standard_lab("btwophones")?;
    let rig = Rig::start(&lab, mode)?;
    let plan = PhonePlan {
        second_phone: true,
        ..PhonePlan::default()
    };
    let out = wrong_password_phone_scenario(&rig, plan)?;
    let ok = out.second.iter().filter(|a| a.registered).count();
    let cell = format!(
        "301 registered {ok} of {} times; 300: {}",
        out.second.len(),
        phone_story(&out)
    );
    Ok(Measured {
        detail: format!("{cell}; ban {:?}; known-good {:?}", out.ban, out.known_good),
        cell,
    })
}

fn run_flood(mode: AgentMode) -> Result<Measured> {
    let lab = standard_lab("bflood")?;
    let rig = Rig::start(&lab, mode)?;
    let out = flood_scenario(&rig, 2000.0, Duration::from_secs(20), 5.0)?;
    let phone = out.phone.clone().unwrap_or_default();
    let cell = format!(
        "{} of {} reached the registrar ({:.1} %); phone {} of {}; {}",
        count(out.requests_reached as u64),
        count(out.flood.created),
        out.reached_percent(),
        phone.successful,
        phone.created,
        ban_text(&out.ban, out.ban_after)
    );
    let detail = format!(
        "{cell}; flood answered {} of {}; meter: {} arrived, {} passed{}",
        out.flood.successful,
        out.flood.created,
        out.arrived,
        out.passed,
        reason(&out.ban)
    );
    Ok(Measured { cell, detail })
}

fn run_guess_flood(mode: AgentMode) -> Result<Measured> {
    let mut cells = Vec::new();
    let mut details = Vec::new();
    for (transport, tag, name) in [
        (SipTransport::Udp, "bguessudp", "UDP"),
        (SipTransport::Tcp, "bguesstcp", "one TCP connection"),
    ] {
        // A fresh lab each: the second run must not meet the first one's ban.
        let lab = standard_lab(tag)?;
        let rig = Rig::start(&lab, mode)?;
        let out = guess_flood_scenario(&rig, transport, 2000.0, Duration::from_secs(20))?;
        cells.push(format!(
            "{name}: {} guesses reached",
            count(out.guesses_reached as u64)
        ));
        details.push(format!(
            "{name}: {} guesses sent, {} judged by the registrar ({} requests), meter {} \
             arrived, {} passed; {}{}",
            out.flood.created,
            out.guesses_reached,
            out.requests_reached,
            out.arrived,
            out.passed,
            ban_text(&out.ban, out.ban_after),
            reason(&out.ban)
        ));
    }
    Ok(Measured {
        cell: cells.join("; "),
        detail: details.join("; "),
    })
}
