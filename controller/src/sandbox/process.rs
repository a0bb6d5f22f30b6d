//! The real `palisade-controller` binary in a child process: for what the
//! in-process [`Sandbox`](super::Sandbox) cannot show, a SIGKILL, a restart
//! of the same binary on the same data directory and port, and the
//! process's own memory and CPU.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Log lines an error carries: enough to show why it died.
const TAIL: usize = 30;

/// `palisade-controller run --data DATA --listen 127.0.0.1:PORT ARGS…`,
/// started (and restarted) by [`start`](Self::start). Each start writes its
/// stdout and stderr to a new `controller-N.log` next to the data directory,
/// so a restart's log does not hide why the one before went wrong. Killed
/// on drop.
pub struct ControllerProcess {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    url: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    child: Option<Child>,
    logs: Vec<PathBuf>,
}

impl ControllerProcess {
    /// Not started yet. `bin` comes from the caller because only a test or
    /// bench knows where Cargo put it (`env!("CARGO_BIN_EXE_palisade-controller")`).
    pub fn new(bin: impl Into<PathBuf>, data: impl Into<PathBuf>, port: u16) -> Self {
        ControllerProcess {
            bin: bin.into(),
            data: data.into(),
            port,
            url: format!("https://127.0.0.1:{port}"),
            args: vec![],
            envs: vec![],
            child: None,
            logs: vec![],
        }
    }

    /// More arguments to `run`, for every start.
    pub fn args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes operator `name`'s bundle to `out` and returns it. Run before
    /// the first start: it creates the data directory's CA.
    pub fn operator_cert(&self, name: &str, out: &Path) -> Result<String> {
        let done = Command::new(&self.bin)
            .args(["operator-cert", "--name", name, "--data"])
            .arg(&self.data)
            .arg("--out")
            .arg(out)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        if !done.status.success() {
            bail!(
                "operator-cert: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            );
        }
        Ok(std::fs::read_to_string(out)?)
    }

    /// The CA certificate (PEM) agents enrol against.
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.data.join("ca.pem"))?)
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the controller is already running");
        }
        let log = self
            .data
            .with_file_name(format!("controller-{}.log", self.logs.len()));
        let out = File::create(&log)?;
        let mut cmd = Command::new(&self.bin);
        // Dies with its parent, since a ^C, a panic that aborts or a timeout
        // skips Drop. (The signal comes when the spawning *thread* ends, so
        // start it from one that lives as long as the process should.)
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .arg("run")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.logs.push(log);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (no chance to flush or say goodbye), and reap it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// An error with the log's tail if the process has exited: waiting for
    /// a dead controller would only end in a timeout that hides why.
    pub fn check_alive(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .context("the controller is not running")?;
        if let Some(st) = child.try_wait()? {
            bail!("the controller exited: {st}; log:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Until its port takes connections.
    pub async fn wait_listening(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not listen within {within:?}; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One log file a start, oldest first.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// Every start's log, in order.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The end of the latest start's log.
    pub fn log_tail(&self) -> String {
        let text = self
            .logs
            .last()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(TAIL)..].join("\n")
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.running_pid()?))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))
    }

    /// User + system CPU time the process has used so far.
    pub fn cpu(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.running_pid()?))?;
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
        Ok(Duration::from_millis(ticks * 1000 / hz))
    }

    fn running_pid(&self) -> Result<u32> {
        self.pid().context("the controller is not running")
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago (another process may
/// take it before the controller binds it; good enough for tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
