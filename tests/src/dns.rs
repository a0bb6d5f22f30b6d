//! Name resolution inside namespaces: a real DNS server (dnsmasq) and the
//! per-namespace `resolv.conf` that programs started with `ip netns exec`
//! see.
//!
//! `ip netns exec NAME` bind-mounts every file of `/etc/netns/NAME/` over
//! its namesake in `/etc` (in the command's own mount namespace), so a
//! program started with [`Netns::command`] in a namespace that has a
//! [`ResolvConf`] resolves through the name servers written there, through
//! the system resolver, like on a real host. The machine's own
//! `/etc/resolv.conf` is never touched.

use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::host::require_programs;
use crate::netns::{harness_pid, process_alive};
use crate::{ChildGuard, Netns};

/// Where `ip netns exec` looks for a namespace's own `/etc` files.
const ETC_NETNS: &str = "/etc/netns";

/// A real DNS server in a namespace: dnsmasq, authoritative for `.test`
/// (nothing is forwarded anywhere), serving A/AAAA records from a hosts
/// file. Killed when dropped.
pub struct Dnsmasq {
    child: ChildGuard,
    listen: Vec<IpAddr>,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on port 53 of each address of `listen` (and
    /// only those), answering `records` (`name`, address), and waits until
    /// it answers on every address.
    pub fn start(ns: &Netns, listen: &[IpAddr], records: &[(&str, IpAddr)]) -> Result<Dnsmasq> {
        if listen.is_empty() {
            bail!("dnsmasq needs at least one address to listen on");
        }
        let dir = tempfile::Builder::new().prefix("pal-dnsmasq").tempdir()?;
        let hosts = dir.path().join("hosts");
        let text: String = records
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(&hosts, text)?;
        let listen_list: Vec<String> = listen.iter().map(IpAddr::to_string).collect();
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--port=53",
            "--local=/test/",
            "--user=root",
            "--pid-file=",
            "--local-ttl=1",
        ])
        .arg(format!("--listen-address={}", listen_list.join(",")))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("dnsmasq.log"))?);
        let child = ns.spawn(cmd).context("cannot start dnsmasq")?;
        let mut dns = Dnsmasq {
            child,
            listen: listen.to_vec(),
            dir,
        };
        dns.wait_ready(ns, records.first().map(|(name, _)| *name))?;
        Ok(dns)
    }

    /// The addresses it listens on.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.listen
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// Waits until a query for `name` (or the root, without records) is
    /// answered on every listening address.
    fn wait_ready(&mut self, ns: &Netns, name: Option<&str>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let name = name.unwrap_or("ready.test");
        let mut pending = self.listen.clone();
        while !pending.is_empty() {
            if let Some(status) = self.child.try_wait()? {
                bail!("dnsmasq exited during start-up ({status}): {}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "dnsmasq did not answer on {pending:?} within 10 s: {}",
                    self.log()
                );
            }
            pending.retain(|&server| {
                query_answered(ns, server, name, Duration::from_millis(300)).is_err()
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// Sends one DNS query (type A) for `name` from `ns` to `server`:53 and
/// waits up to `timeout` for an answer with the query's id: whether the
/// server is up, without going through any resolver configuration.
fn query_answered(ns: &Netns, server: IpAddr, name: &str, timeout: Duration) -> Result<()> {
    let id: u16 = 0x5a17;
    let mut packet = Vec::with_capacity(32 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    // Recursion desired; one question.
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).context("label too long")?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    ns.try_enter(|| -> Result<()> {
        let bind: IpAddr = if server.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = std::net::UdpSocket::bind((bind, 0))?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(&packet, (server, 53))?;
        let mut buf = [0u8; 512];
        let (n, _) = socket.recv_from(&mut buf)?;
        if n < 2 || buf[..2] != id.to_be_bytes() {
            bail!("not an answer to the query");
        }
        Ok(())
    })?
}

/// `getent ahosts NAME` in `ns` through `ip netns exec` (so through the
/// namespace's [`ResolvConf`], like any program started there): the
/// addresses the system resolver gives, or the error (a name that does not
/// resolve, a resolver that does not answer).
pub fn resolve(ns: &Netns, name: &str) -> Result<Vec<IpAddr>> {
    let out = ns
        .command("getent")
        .args(["ahosts", name])
        .stdin(Stdio::null())
        .output()
        .context("cannot run getent")?;
    if !out.status.success() {
        bail!(
            "getent ahosts {name} in {} failed ({}){}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut addrs: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// `/etc/netns/<namespace>/resolv.conf` for some namespaces: their
/// programs started with `ip netns exec` resolve through the name servers
/// given here. Written before the programs start (the bind mount is made
/// when a program starts); removed on drop, also when a test panics, with
/// the directories made for them, so the machine is left as it was.
pub struct ResolvConf {
    dirs: Vec<PathBuf>,
    made_root: bool,
}

impl ResolvConf {
    /// Writes one `resolv.conf` per `(namespace, name server)`; the options
    /// make a resolver that does not answer fail within about 2 s (one
    /// second per try, two tries), as a host with a short timeout would.
    pub fn write(entries: &[(&Netns, IpAddr)]) -> Result<ResolvConf> {
        let root = Path::new(ETC_NETNS);
        cleanup_stale(root);
        let made_root = !root.exists();
        if made_root {
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create {}", root.display()))?;
        }
        // From here on, dropping `conf` removes what was made so far.
        let mut conf = ResolvConf {
            dirs: Vec::new(),
            made_root,
        };
        for (ns, server) in entries {
            let dir = root.join(ns.name());
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            conf.dirs.push(dir.clone());
            std::fs::write(
                dir.join("resolv.conf"),
                format!(
                    "# palisade-tests: {} only\nnameserver {server}\noptions timeout:1 attempts:2\n",
                    ns.name()
                ),
            )?;
        }
        Ok(conf)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("palisade-tests: cannot remove {}: {e}", dir.display());
            }
        }
        if self.made_root {
            // Only when empty: another test may have made its own meanwhile.
            match std::fs::remove_dir(ETC_NETNS) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(_) if std::fs::read_dir(ETC_NETNS).is_ok_and(|mut d| d.next().is_some()) => {}
                Err(e) => eprintln!("palisade-tests: cannot remove {ETC_NETNS}: {e}"),
            }
        }
    }
}

/// Removes `/etc/netns/<name>` directories of namespaces made by a killed
/// run of the harness (their pid no longer runs), as
/// [`crate::cleanup_stale_namespaces`] does for the namespaces themselves.
fn cleanup_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = harness_pid(&name) else {
            continue;
        };
        if pid != me && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Fails with an explanation unless dnsmasq and getent are installed: like
/// [`crate::require_root_tools`], a missing tool fails the test loudly.
pub fn require_dns_tools() -> Result<()> {
    require_programs(&[
        ("dnsmasq", &["--version"], "apt-get install dnsmasq-base"),
        ("getent", &["--version"], "apt-get install libc-bin"),
    ])
}
