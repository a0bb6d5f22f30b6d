//! The two binaries end to end: `palisade-controller run` as a process,
//! `palisade` against it, and `kill -9` losing nothing acknowledged.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use palisade_controller::sandbox::{free_port, AgentCreds, ControllerProcess};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_palisade-controller");
const CLI: &str = env!("CARGO_BIN_EXE_palisade");

struct Controller {
    process: ControllerProcess,
    /// As the controller printed it.
    url: String,
}

fn controller(data: &Path, port: u16) -> ControllerProcess {
    ControllerProcess::new(CONTROLLER, data, port).env("RUST_LOG", "warn")
}

/// Starts it and reads the URL from what it prints (into its log).
fn start(mut process: ControllerProcess) -> Controller {
    process.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = process.log_text();
        if text.contains("operator access") || Instant::now() > deadline {
            break text;
        }
        process.check_alive().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    };
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("URL (in tokens):"))
        .map(|u| u.trim().to_string());
    assert!(
        text.contains("CA certificate:") && text.contains("store:"),
        "{text}"
    );
    Controller {
        process,
        url: url.unwrap_or_else(|| panic!("no URL in {text}")),
    }
}

fn cli(c: &Controller, cert: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLI)
        .args(["--controller", &c.url, "--cert"])
        .arg(cert)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(c: &Controller, cert: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli(c, cert, args);
    assert!(ok, "palisade {args:?}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binaries_work_together_and_kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cert = dir.path().join("alice.pem");
    let port = free_port().unwrap();
    let metrics = free_port().unwrap();
    let first = controller(&data, port).args(["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
    first.operator_cert("alice", &cert).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut c = start(first);
    assert_eq!(c.url, format!("https://127.0.0.1:{port}"));

    let token = ok(
        &c,
        &cert,
        &[
            "token", "create", "--tenant", "t1", "--site", "a", "--valid", "10m",
        ],
    );
    let token = token.trim();
    assert!(token.starts_with("pal1."), "{token}");
    let ca = std::fs::read_to_string(data.join("ca.pem")).unwrap();
    let agent = AgentCreds::enroll(&c.url, &ca, token, "pbx1")
        .await
        .unwrap();
    let mut s = agent.sync(0, &["198.51.100.1"]).await.unwrap();
    s.drain(Duration::from_millis(200)).await.unwrap();

    let hosts = ok(&c, &cert, &["hosts", "--tenant", "t1"]);
    assert!(hosts.contains("t1/a/pbx1\tconnected"), "{hosts}");
    assert!(hosts.contains("198.51.100.1"), "{hosts}");
    assert!(ok(&c, &cert, &["tenants"]).contains("t1\ta"));

    // Bans: each acknowledged by the CLI's exit, then kill -9.
    for i in 1..=30 {
        ok(
            &c,
            &cert,
            &[
                "ban",
                "add",
                "--tenant",
                "t1",
                &format!("203.0.113.{i}"),
                "--reason",
                "test",
                "--for",
                "1h",
            ],
        );
    }
    s.wait_until(Duration::from_secs(2), |s| s.bans.len() == 30)
        .await
        .unwrap();
    let bans = ok(&c, &cert, &["bans", "--tenant", "t1"]);
    assert_eq!(bans.lines().count(), 31, "{bans}");
    assert!(bans.contains("203.0.113.7\ttest\toperator:alice"), "{bans}");

    // Metrics.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).unwrap();
    assert!(
        page.contains("palisade_controller_connected_agents 1"),
        "{page}"
    );
    assert!(
        page.contains("palisade_controller_bans_received_total"),
        "{page}"
    );

    // Invalid policy: refused, clear message, exit status.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "management = [\"not an address\"]\n").unwrap();
    let (success, _, err) = cli(
        &c,
        &cert,
        &[
            "policy",
            "set",
            "--tenant",
            "t1",
            "--site",
            "a",
            bad.to_str().unwrap(),
        ],
    );
    assert!(!success);
    assert!(
        err.contains("refused (InvalidArgument): the policy does not validate"),
        "{err}"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "management = [\"192.0.2.10\"]\n").unwrap();
    ok(
        &c,
        &cert,
        &[
            "policy",
            "set",
            "--tenant",
            "t1",
            "--site",
            "a",
            good.to_str().unwrap(),
        ],
    );
    s.wait_until(Duration::from_secs(1), |s| s.policy.is_some())
        .await
        .unwrap();
    assert_eq!(
        ok(
            &c,
            &cert,
            &["policy", "get", "--tenant", "t1", "--site", "a"]
        ),
        "management = [\"192.0.2.10\"]\n"
    );

    // kill -9, start again: every acknowledged ban is there.
    c.process.kill().unwrap();
    drop(c);
    let c = start(controller(&data, port));
    let bans = ok(&c, &cert, &["bans", "--tenant", "t1"]);
    assert_eq!(bans.lines().count(), 31, "{bans}");
    assert!(ok(
        &c,
        &cert,
        &["policy", "get", "--tenant", "t1", "--site", "a"]
    )
    .contains("192.0.2.10"));
    // The agent resumes without a snapshot.
    let rev = s.revision;
    let mut s = agent.sync(rev, &["198.51.100.1"]).await.unwrap();
    assert!(!s.welcome.snapshot);
    assert!(s
        .drain(Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());

    ok(&c, &cert, &["ban", "lift", "--tenant", "t1", "203.0.113.1"]);
    s.wait_until(Duration::from_secs(1), |s| s.log.iter().any(|m| matches!(&m.body, Some(palisade_proto::v1::controller_message::Body::Bans(d)) if d.lifted == ["203.0.113.1"]))).await.unwrap();
    ok(&c, &cert, &["host", "revoke", "t1", "a", "pbx1"]);
    let st = s.ended(Duration::from_secs(1)).await.expect("cut");
    assert_eq!(st.code(), tonic::Code::PermissionDenied);
    let audit = ok(&c, &cert, &["audit", "--tenant", "t1"]);
    for action in [
        "host.revoke",
        "ban.lift",
        "ban.add",
        "policy.set (refused)",
        "host.enroll",
        "token.create",
    ] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
    // A reused token from the CLI's point of view.
    let err = AgentCreds::enroll(&c.url, &ca, token, "pbx2")
        .await
        .err()
        .unwrap();
    assert!(err.message().contains("already used"));
    // No credentials: a clear error.
    let out = Command::new(CLI)
        .args(["--controller", &c.url, "tenants"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert FILE"));
}

/// A controller process with one operator and one connected simulated agent
/// of tenant t1.
async fn fleet_of_one(
    dir: &Path,
) -> (
    Controller,
    std::path::PathBuf,
    palisade_controller::sandbox::SimAgent,
) {
    let data = dir.join("data");
    let cert = dir.join("bob.pem");
    let process = controller(&data, free_port().unwrap());
    process.operator_cert("bob", &cert).unwrap();
    let c = start(process);
    let token = ok(
        &c,
        &cert,
        &["token", "create", "--tenant", "t1", "--site", "a"],
    );
    let ca = std::fs::read_to_string(data.join("ca.pem")).unwrap();
    let agent = AgentCreds::enroll(&c.url, &ca, token.trim(), "pbx1")
        .await
        .unwrap();
    let mut s = agent.sync(0, &["198.51.100.1"]).await.unwrap();
    s.drain(Duration::from_millis(200)).await.unwrap();
    (c, cert, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_edit_user_rules_explain_and_events_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (c, cert, mut s) = fleet_of_one(dir.path()).await;

    // `policy edit`: the operator's editor changes the stored document; an
    // edit that does not validate stores nothing.
    let edit = |editor: &str| {
        Command::new(CLI)
            .args(["--controller", &c.url, "--cert"])
            .arg(&cert)
            .args(["policy", "edit", "--tenant", "t1", "--site", "a"])
            .env("EDITOR", editor)
            .env_remove("VISUAL")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = edit("sh -c 'echo \"management = [\\\"192.0.2.10\\\"]\" > \"$1\"' sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = edit("sed -i s/192.0.2.10/192.0.2.11/");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_until(Duration::from_secs(1), |s| {
        s.policy.as_deref() == Some("management = [\"192.0.2.11\"]\n")
    })
    .await
    .unwrap();
    let out = edit("sed -i s/192.0.2.11/192.0.2.999/");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("192.0.2.999") && err.contains("nothing stored"),
        "{err}"
    );
    assert_eq!(
        ok(
            &c,
            &cert,
            &["policy", "get", "--tenant", "t1", "--site", "a"]
        ),
        "management = [\"192.0.2.11\"]\n"
    );
    let out = edit("true");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));

    // Per-user rules.
    ok(
        &c,
        &cert,
        &["users", "set", "--tenant", "t1", "300=ucp", "333=admin,ssh"],
    );
    assert_eq!(
        ok(&c, &cert, &["users", "get", "--tenant", "t1"]),
        "300 = ucp\n333 = admin,ssh\n"
    );
    let (success, _, err) = cli(
        &c,
        &cert,
        &["users", "set", "--tenant", "t1", "300=ucp,telnet"],
    );
    assert!(
        !success && err.contains("unknown service \"telnet\""),
        "{err}"
    );
    let (success, _, err) = cli(&c, &cert, &["users", "set", "--tenant", "t1", "300"]);
    assert!(!success && err.contains("EXTENSION=SERVICE"), "{err}");
    s.wait_until(Duration::from_secs(1), |s| s.user_rules.is_some())
        .await
        .unwrap();

    // `events` follows the fleet: a ban and its lift, as they happen.
    let mut events = Command::new(CLI)
        .args(["--controller", &c.url, "--cert"])
        .arg(&cert)
        .args(["events", "--tenant", "t1", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Never a hung test: an event that did not come fails it.
    let pid = events.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = Command::new("kill").arg(pid.to_string()).status();
    });
    // It says so once the controller has subscribed it.
    let mut said = String::new();
    BufReader::new(events.stderr.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert!(said.starts_with("following the events of t1"), "{said}");
    ok(
        &c,
        &cert,
        &[
            "ban",
            "add",
            "--tenant",
            "t1",
            "203.0.113.5",
            "--reason",
            "scanner",
        ],
    );
    ok(&c, &cert, &["ban", "lift", "--tenant", "t1", "203.0.113.5"]);
    let mut text = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(events.wait().unwrap().success());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("\toperator:bob\tban\t203.0.113.5\tscanner"),
        "{text}"
    );
    assert!(lines[1].contains("\tlift\t203.0.113.5\t"), "{text}");

    // `explain`: the connected host answers, in the CLI's words.
    let url = c.url.clone();
    let cert2 = cert.clone();
    let asked = tokio::task::spawn_blocking(move || {
        Command::new(CLI)
            .args(["--controller", &url, "--cert"])
            .arg(&cert2)
            .args(["explain", "--tenant", "t1", "198.51.100.50", "22/tcp"])
            .output()
            .unwrap()
    });
    s.wait_until(Duration::from_secs(3), |s| !s.questions.is_empty())
        .await
        .unwrap();
    let q = s.questions.remove(0);
    s.send(palisade_proto::v1::agent_message::Body::Explain(
        palisade_proto::v1::ExplainAnswer {
            id: q.id,
            verdict: Some(palisade_proto::v1::HostVerdict {
                decision: "blocked".into(),
                stage: "zones".into(),
                why: "zone internet: ssh is not open to it".into(),
                ..Default::default()
            }),
            error: String::new(),
        },
    ))
    .await
    .unwrap();
    let out = asked.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("t1/a/pbx1\tBLOCKED at stage zones: zone internet: ssh is not open to it"),
        "{text}"
    );
}
