//! Network namespaces that clean up after themselves.
//!
//! Namespaces are named `pal<tag>-<pid>-<n>`: the pid of the test process
//! and a per-process counter make names unique across parallel tests (cargo
//! runs tests as threads of one process) and across concurrent test runs,
//! and the embedded pid lets a later run recognise namespaces left behind by
//! a run that was killed before its destructors ran
//! ([`cleanup_stale_namespaces`]).

use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Every namespace name made by this harness starts with this.
const PREFIX: &str = "pal";
/// Where `ip netns` keeps the bind mounts that give namespaces their names.
const NETNS_DIR: &str = "/run/netns";
/// Tags are kept short because names end up in paths and process listings.
const MAX_TAG_LEN: usize = 16;

/// Source of the `<n>` part of namespace names.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Stale namespaces are removed once per process, before the first new one.
static STALE_CLEANUP: Once = Once::new();
/// Serialises `ip netns add`: the first call on a machine sets up the shared
/// `/run/netns` mount, and concurrent first calls can stack mounts.
static ADD_LOCK: Mutex<()> = Mutex::new(());

/// A network namespace that is deleted on drop — together with every
/// process running in it — also when the test owning it panics.
///
/// The namespace is fully isolated: it starts with only `lo` (up, with
/// `127.0.0.1` and `::1`), its own routing tables, its own sysctls and an
/// empty nftables ruleset. IPv6 is enabled and duplicate address detection is
/// off, so IPv6 addresses added later are usable at once.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace named `pal<tag>-<pid>-<n>`.
    ///
    /// `tag` (1 to 16 ASCII letters or digits) only makes the name
    /// recognisable in `ip netns list` while debugging. The first call in a
    /// process also removes namespaces left behind by earlier, killed runs.
    pub fn new(tag: &str) -> Result<Netns> {
        validate_tag(tag)?;
        STALE_CLEANUP.call_once(|| {
            if let Err(e) = cleanup_stale_namespaces() {
                eprintln!("palisade-tests: cleanup of stale namespaces failed: {e:#}");
            }
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        {
            let _serialised = ADD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        }
        // From here on, dropping `ns` (also on the error path) deletes it.
        let ns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        ns.configure()
            .with_context(|| format!("cannot configure namespace {}", ns.name))?;
        Ok(ns)
    }

    fn configure(&self) -> Result<()> {
        // Before `lo` goes up, so that it gets `::1`; `default.*` is what
        // interfaces created later (veth ends) inherit.
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            self.sysctl(key, "0")?;
        }
        self.ip(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle in the file system (`/run/netns/<name>`), for
    /// tools that take a namespace path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip netns exec <name> <program>`, to add arguments, environment or
    /// stdio to and then run, or to hand to [`Netns::spawn`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` inside the namespace to completion and returns
    /// its standard output; a non-zero exit is an error whose message holds
    /// the command line, the exit status, stdout and stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run_checked(self.command(program).args(args))
    }

    /// Like [`Netns::run`], with `input` written to the program's stdin.
    pub fn run_with_stdin(&self, program: &str, args: &[&str], input: &str) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_checked_with_stdin(&mut cmd, input)
    }

    /// Loads an nftables script (`nft -f -`) into this namespace's ruleset.
    pub fn nft(&self, script: &str) -> Result<String> {
        self.run_with_stdin("nft", &["-f", "-"], script)
    }

    /// Runs `ip -n <name> args...`: iproute2 switches into the namespace
    /// itself, which is cheaper than `ip netns exec <name> ip ...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a sysctl of this namespace, e.g.
    /// `("net.ipv4.conf.all.forwarding", "1")`.
    ///
    /// Network sysctls under `/proc/sys/net` belong to the namespace of the
    /// thread that opens them, so this writes them from a thread inside the
    /// namespace instead of spawning `sysctl`. Keys may use dots or slashes;
    /// use slashes when an interface name contains a dot (VLANs).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let relative = if key.contains('/') {
            key.to_owned()
        } else {
            key.replace('.', "/")
        };
        let path = Path::new("/proc/sys").join(relative);
        self.try_enter(|| std::fs::write(&path, value))?
            .with_context(|| format!("cannot set sysctl {key}={value} in {}", self.name))
    }

    /// Spawns a long-running process inside the namespace and returns a
    /// guard that kills it (and its process group) when dropped.
    ///
    /// `cmd` is usually made with [`Netns::command`], but any command works:
    /// the child is moved into the namespace with `setns(2)` before it
    /// executes, either way. The child gets its own process group so that a
    /// kill also reaches helpers it forked.
    pub fn spawn(&self, mut cmd: Command) -> Result<ChildGuard> {
        let ns_fd = OwnedFd::from(self.open()?);
        cmd.process_group(0);
        // SAFETY: between fork and exec the closure only calls setns(2),
        // which is async-signal-safe, and turns errno into an `io::Error`
        // without allocating.
        unsafe {
            cmd.pre_exec(move || setns(&ns_fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        }
        let description = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn {description} in {}", self.name))?;
        Ok(ChildGuard { child, description })
    }

    /// Runs `f` on a fresh thread that has joined this namespace and returns
    /// its result (a panic in `f` is propagated to the caller).
    ///
    /// Sockets keep the namespace they were created in, so a socket made in
    /// `f` can be returned and used from any thread afterwards. A new thread
    /// is used so the caller's thread never changes namespace. Panics if the
    /// namespace cannot be joined; [`Netns::try_enter`] returns an error
    /// instead.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.try_enter(f).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Netns::enter`], but failing to join the namespace is an error.
    pub fn try_enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let ns_file = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name(format!("in-{name}"))
                .spawn_scoped(scope, move || -> Result<R> {
                    setns(&ns_file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into namespace {name} failed"))?;
                    Ok(f())
                })
                .context("cannot spawn a thread")?;
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn open(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("cannot open {}", self.path.display()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = destroy(&self.name) {
            eprintln!(
                "palisade-tests: cannot delete namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// A process started with [`Netns::spawn`]; killed with SIGKILL (its whole
/// process group) and reaped when dropped, so no test leaves processes
/// behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    description: String,
}

impl ChildGuard {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process itself (not its group), e.g. SIGTERM to
    /// test a graceful shutdown or SIGHUP to test a reload.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.nix_pid(), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.description))
    }

    /// Kills the process and its group with SIGKILL — an unclean crash, as
    /// far as the process can tell — and reaps it. Returns its exit status;
    /// if it had already exited, nothing is killed.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        match killpg(self.nix_pid(), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot kill {}", self.description));
            }
        }
        self.child
            .wait()
            .with_context(|| format!("cannot reap {}", self.description))
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still
    /// runs then.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The underlying child, e.g. to take its piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("palisade-tests: {e:#}");
        }
    }
}

/// Names of all network namespaces on the machine (`ip netns list`),
/// whoever made them.
pub fn netns_names() -> Result<Vec<String>> {
    let out = run_checked(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like `name (id: 3)` or just `name`.
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Deletes namespaces left behind by earlier test runs: those whose name
/// follows this harness's pattern and whose embedded pid no longer runs (the
/// run was killed before its destructors could delete them). Namespaces of
/// live processes — including concurrent test runs — are left alone.
///
/// Called automatically before the first [`Netns::new`] of a process.
/// Returns the names it deleted.
pub fn cleanup_stale_namespaces() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_DIR}")),
    };
    let me = std::process::id();
    let mut deleted = Vec::new();
    for entry in entries {
        let Ok(name) = entry?.file_name().into_string() else {
            continue;
        };
        let Some(pid) = harness_pid(&name) else {
            continue;
        };
        if pid == me || process_alive(pid) {
            continue;
        }
        match destroy(&name) {
            Ok(()) => deleted.push(name),
            // Another process may be cleaning up the same leftovers.
            Err(_) if !Path::new(NETNS_DIR).join(&name).exists() => {}
            Err(e) => eprintln!("palisade-tests: cannot delete stale namespace {name}: {e:#}"),
        }
    }
    Ok(deleted)
}

/// The pid embedded in a name made by [`Netns::new`], or `None` if `name`
/// does not follow the pattern `pal<tag>-<pid>-<n>`.
pub(crate) fn harness_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let (n, pid, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !valid_tag(tag) || !digits(n) || !digits(pid) {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

fn valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG_LEN).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn validate_tag(tag: &str) -> Result<()> {
    if !valid_tag(tag) {
        bail!("namespace tag {tag:?} must be 1 to {MAX_TAG_LEN} ASCII letters or digits");
    }
    Ok(())
}

/// Kills every process in namespace `name`, then deletes it.
///
/// The processes are killed first because a namespace lives on, unnamed and
/// invisible to `ip netns`, for as long as a process is inside it; the
/// harness promises that nothing it started survives the test.
fn destroy(name: &str) -> Result<()> {
    if let Err(e) = kill_processes_in(name) {
        eprintln!("palisade-tests: {e:#}");
    }
    run_checked(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

fn kill_processes_in(name: &str) -> Result<()> {
    let out = run_checked(Command::new("ip").args(["netns", "pids", name]))?;
    let me = std::process::id();
    for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // `ip netns pids` looks at each process's main thread, so this
        // process is never listed even while one of its threads is inside;
        // the check is a safety net.
        if pid > 0 && pid as u32 != me {
            // ESRCH: it exited meanwhile, which is the goal anyway.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    Ok(())
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an
/// error holding the command line, status, stdout and stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    check_output(cmd, out)
}

fn run_checked_with_stdin(cmd: &mut Command, input: &str) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut stdin = child.stdin.take().context("stdin was not piped")?;
    // Written from another thread: a program that prints a lot before it
    // has read all its input would otherwise deadlock against us.
    let out = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output();
        // A program may exit without reading everything (EPIPE); its exit
        // status is what tells whether it failed.
        let _ = writer.join();
        out
    })
    .with_context(|| format!("cannot run {cmd:?}"))?;
    check_output(cmd, out)
}

fn check_output(cmd: &Command, out: std::process::Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            stdout.trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_names_are_recognised() {
        assert_eq!(harness_pid("palh-1234-0"), Some(1234));
        assert_eq!(harness_pid("palLabc3-99-17"), Some(99));
        let own = format!("palx-{}-5", std::process::id());
        assert_eq!(harness_pid(&own), Some(std::process::id()));
    }

    #[test]
    fn foreign_names_are_ignored() {
        for name in [
            "pal",
            "pal-1-2",
            "palx-1",
            "palx-a-2",
            "palx-1-b",
            "palx-0-1",
            "pal-x-1-2",
            "pbx-1-2",
            "mypalx-1-2",
            "palx-1-2-",
        ] {
            assert_eq!(harness_pid(name), None, "{name}");
        }
    }

    #[test]
    fn tags_are_validated() {
        assert!(validate_tag("lab3").is_ok());
        assert!(validate_tag("").is_err());
        assert!(validate_tag("a-b").is_err());
        assert!(validate_tag("a/b").is_err());
        assert!(validate_tag(&"x".repeat(MAX_TAG_LEN + 1)).is_err());
    }
}
