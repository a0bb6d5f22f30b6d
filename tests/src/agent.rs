//! Driving the real `palisade-agent` binary inside a namespace.

use crate::{workspace_bin, ChildGuard, Netns};
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

/// An agent installation in one namespace: its binary, config file and state
/// directory (a temporary directory removed on drop).
pub struct AgentHost<'a> {
    pub ns: &'a Netns,
    pub bin: PathBuf,
    dir: tempfile::TempDir,
}

impl<'a> AgentHost<'a> {
    pub fn new(ns: &'a Netns) -> Result<AgentHost<'a>> {
        Ok(AgentHost {
            ns,
            bin: workspace_bin("palisade-agent")?,
            dir: tempfile::tempdir()?,
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// Writes a policy file next to the config and returns its path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A `palisade-agent` command line inside the namespace, with this host's
    /// config and state directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(self.bin.to_str().expect("utf-8 path"));
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args);
        cmd
    }

    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .context("cannot run palisade-agent")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "palisade-agent {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if out.status.success() {
            bail!("palisade-agent {args:?} succeeded but should have failed");
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn apply(&self, policy: &Path) -> Result<String> {
        self.ok(&["apply", policy.to_str().expect("utf-8 path")])
    }

    /// Starts `palisade-agent run` (metrics off) and waits until its table is loaded.
    pub fn start_daemon(&self) -> Result<ChildGuard> {
        let mut cmd = self.command(&["run", "--metrics-listen", "none"]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("daemon.log"))?);
        let guard = self.ns.spawn(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.table_json()?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not load its table within 10 s: {}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(guard)
    }

    /// Waits until the daemon's log contains `needle` (e.g. "SIP watch started").
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.daemon_log().contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not log {needle:?} within {timeout:?}: {}",
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// When the daemon decided to ban `ip`: the timestamp of its first
    /// `banned addr=IP` log line (written as the verdict goes to the kernel,
    /// a few hundred microseconds before the ban is in force).
    pub fn ban_logged(&self, ip: IpAddr) -> Option<SystemTime> {
        let needle = format!("banned addr={ip} ");
        self.daemon_log()
            .lines()
            .map(crate::sip::strip_ansi)
            .find(|l| l.contains(&needle))
            .and_then(|l| crate::sip::parse_rfc3339_utc(l.split_whitespace().next()?))
    }

    /// `nft -j list table inet palisade`, or `None` when the table is absent.
    pub fn table_json(&self) -> Result<Option<String>> {
        table_json(self.ns, "inet", "palisade")
    }
}

/// `nft -j list table FAMILY NAME` in a namespace, `None` when absent.
pub fn table_json(ns: &Netns, family: &str, name: &str) -> Result<Option<String>> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "table", family, name])
        .output()?;
    if out.status.success() {
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        Ok(None)
    }
}

/// A listing with rule counters zeroed and element countdowns removed: what a
/// table *is*, as opposed to what traffic it has seen.
pub fn structure(json: &str) -> String {
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(c)) = map.get_mut("counter") {
                    c.insert("packets".into(), 0.into());
                    c.insert("bytes".into(), 0.into());
                }
                map.remove("expires");
                map.values_mut().for_each(scrub);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(json).expect("nft -j output is JSON");
    scrub(&mut v);
    v.to_string()
}
