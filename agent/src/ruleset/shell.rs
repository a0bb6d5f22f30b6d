//! A long-lived `nft -j -i` for the fast path: bans and known-good updates land
//! in the kernel in a fraction of a millisecond instead of the few milliseconds
//! a new `nft` process costs.
//!
//! Each line written is one JSON batch, which nft applies as one atomic
//! transaction, exactly like `nft -j -f -`. A successful batch prints nothing,
//! so every batch is followed by a *sentinel*: a numbered line that is not a
//! command, which nft answers with a syntax error quoting it, on stderr, after
//! whatever the batch itself printed there. Everything on stderr before the
//! sentinel's own error belongs to the batch. (`-e`, echoing applied batches,
//! would be the obvious acknowledgement, but it makes nft reload the whole
//! ruleset with every element after each change: 70 ms per ban at 50,000 bans.)
//! The process is restarted when it dies; a batch without an answer in time
//! is reported as failed.

use super::apply::{Nft, NftError};
use nftables::schema::Nftables;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    stdin: ChildStdin,
    /// stderr lines, read by a thread.
    lines: Receiver<Option<String>>,
    sentinel: u64,
}

pub struct NftShell {
    nft: Nft,
    running: Option<Running>,
    timeout: Duration,
}

const SENTINEL: &str = "palisade-sentinel-";

impl NftShell {
    pub fn new(nft: Nft) -> NftShell {
        NftShell {
            nft,
            running: None,
            timeout: Duration::from_secs(2),
        }
    }

    fn start(&self) -> Result<Running, NftError> {
        use std::os::unix::process::CommandExt;
        let (program, prefix) = self.nft.command_parts();
        let exec = |e: std::io::Error| NftError::Exec {
            program: program.to_string(),
            detail: e.to_string(),
        };
        let mut command = Command::new(program);
        // Interactive nft initialises readline, which touches the controlling
        // terminal; from a background process group that stops it (SIGTTOU).
        // Its own session has no terminal at all.
        // SAFETY: setsid(2) is async-signal-safe and nothing else runs between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .args(prefix)
            .args(["-j", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        let stdin = child.stdin.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::Builder::new()
            .name("nft-shell".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(None);
            })
            .map_err(exec)?;
        Ok(Running {
            child,
            stdin,
            lines,
            sentinel: 0,
        })
    }

    /// Starts nft and lets it read the kernel's state once, so the first real
    /// batch (usually a ban) does not pay for it.
    pub fn warm_up(&mut self) -> Result<(), NftError> {
        let nobody = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        self.apply(&super::plan::element_renew(
            palisade_model::DynSet::Ban,
            &[],
            &[nobody],
        ))
    }

    /// Applies one batch as one transaction.
    pub fn apply(&mut self, batch: &Nftables<'_>) -> Result<(), NftError> {
        let started = Instant::now();
        let result = self.exchange(&serde_json::to_vec(batch).expect("nft batches serialize"));
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("palisade_nft_fast_seconds").record(seconds);
        tracing::debug!(seconds, ok = result.is_ok(), "nft shell transaction");
        if result.is_err() {
            metrics::counter!("palisade_nft_transactions_rejected_total").increment(1);
        }
        result
    }

    fn exchange(&mut self, batch: &[u8]) -> Result<(), NftError> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        let running = self.running.as_mut().expect("just started");
        running.sentinel += 1;
        let token = format!("{SENTINEL}{}", running.sentinel);
        let mut input = batch.to_vec();
        input.push(b'\n');
        input.extend_from_slice(token.as_bytes());
        input.push(b'\n');
        if let Err(e) = running
            .stdin
            .write_all(&input)
            .and_then(|_| running.stdin.flush())
        {
            self.stop();
            return Err(NftError::Exec {
                program: "nft -i".into(),
                detail: e.to_string(),
            });
        }
        let deadline = Instant::now() + self.timeout;
        let mut seen: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match running.lines.recv_timeout(left) {
                Ok(Some(line)) if line.trim_end() == token => break,
                Ok(Some(line)) => seen.push(line),
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    self.stop();
                    return Err(NftError::Exec {
                        program: "nft -i".into(),
                        detail: "the nft shell exited".into(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    // We can no longer tell which answer belongs to which batch.
                    self.stop();
                    return Err(NftError::Exec {
                        program: "nft -i".into(),
                        detail: format!("no answer within {:?}", self.timeout),
                    });
                }
            }
        }
        // The sentinel's own complaint is the last error line before it; its
        // caret line follows it and is skipped with the next batch's lines.
        if let Some(i) = seen.iter().rposition(|l| l.contains("Error")) {
            seen.truncate(i);
        }
        let errors: Vec<&str> = seen
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
            .filter(|l| !l.starts_with(SENTINEL))
            .collect();
        if errors.iter().any(|l| l.contains("Error")) {
            return Err(NftError::Rejected {
                stderr: errors.join("\n"),
            });
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

impl Drop for NftShell {
    fn drop(&mut self) {
        self.stop();
    }
}
