//! A long-lived `nft -j -e -i` for the fast path: bans and known-good updates
//! land in the kernel in a fraction of a millisecond instead of the few
//! milliseconds a new `nft` process costs.
//!
//! Each line written is one JSON batch, which nft applies as one atomic
//! transaction, exactly like `nft -j -f -`. With `-e` nft echoes one JSON
//! object per applied batch on stdout (that is the acknowledgement); a
//! rejected batch prints an error on stderr instead. The process is restarted
//! when it dies; a batch that gets no answer in time is reported as failed.

use super::apply::{Nft, NftError};
use nftables::schema::Nftables;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

enum Reply {
    Applied,
    Error(String),
    Closed,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Reply>,
}

pub struct NftShell {
    nft: Nft,
    running: Option<Running>,
    timeout: Duration,
}

impl NftShell {
    pub fn new(nft: Nft) -> NftShell {
        NftShell {
            nft,
            running: None,
            timeout: Duration::from_secs(2),
        }
    }

    fn start(&self) -> Result<Running, NftError> {
        let (program, prefix) = self.nft.command_parts();
        let mut child = Command::new(program)
            .args(prefix)
            .args(["-j", "-e", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NftError::Exec {
                program: program.to_string(),
                detail: e.to_string(),
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, replies) = channel();
        let tx_err = tx.clone();
        std::thread::Builder::new()
            .name("nft-shell-out".into())
            .spawn(move || {
                let mut objects = ObjectSplitter::default();
                let mut buf = [0u8; 8192];
                let mut stdout = stdout;
                loop {
                    match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            for _ in 0..objects.feed(&buf[..n]) {
                                if tx.send(Reply::Applied).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                let _ = tx.send(Reply::Closed);
            })
            .map_err(|e| NftError::Exec {
                program: "nft-shell thread".into(),
                detail: e.to_string(),
            })?;
        std::thread::Builder::new()
            .name("nft-shell-err".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("Error") && tx_err.send(Reply::Error(line)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| NftError::Exec {
                program: "nft-shell thread".into(),
                detail: e.to_string(),
            })?;
        Ok(Running {
            child,
            stdin,
            replies,
        })
    }

    /// Starts nft and lets it read the kernel's state once, so the first real
    /// batch (usually a ban) does not pay for it. Adding the existing table is a
    /// no-op that nft still acknowledges.
    pub fn warm_up(&mut self) -> Result<(), NftError> {
        let mut batch = nftables::batch::Batch::new();
        batch.add(nftables::schema::NfListObject::Table(nftables::schema::Table {
            family: nftables::types::NfFamily::INet,
            name: std::borrow::Cow::Borrowed(super::render::TABLE),
            handle: None,
        }));
        self.apply(&batch.to_nftables())
    }

    /// Applies one batch as one transaction.
    pub fn apply(&mut self, batch: &Nftables<'_>) -> Result<(), NftError> {
        let started = Instant::now();
        let mut line = serde_json::to_vec(batch).expect("nft batches serialize");
        line.push(b'\n');
        let result = self.exchange(&line);
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("palisade_nft_fast_seconds").record(seconds);
        if result.is_err() {
            metrics::counter!("palisade_nft_transactions_rejected_total").increment(1);
        }
        result
    }

    fn exchange(&mut self, line: &[u8]) -> Result<(), NftError> {
        if self.running.is_none() {
            self.running = Some(self.start()?);
        }
        let running = self.running.as_mut().expect("just started");
        // Leftovers of an earlier failure (nft prints several lines per error).
        while running.replies.try_recv().is_ok() {}
        if let Err(e) = running.stdin.write_all(line).and_then(|_| running.stdin.flush()) {
            self.stop();
            return Err(NftError::Exec {
                program: "nft -i".into(),
                detail: e.to_string(),
            });
        }
        match running.replies.recv_timeout(self.timeout) {
            Ok(Reply::Applied) => Ok(()),
            Ok(Reply::Error(first)) => {
                let mut stderr = first;
                while let Ok(Reply::Error(more)) =
                    running.replies.recv_timeout(Duration::from_millis(5))
                {
                    stderr.push('\n');
                    stderr.push_str(&more);
                }
                Err(NftError::Rejected { stderr })
            }
            Ok(Reply::Closed) | Err(RecvTimeoutError::Disconnected) => {
                self.stop();
                Err(NftError::Exec {
                    program: "nft -i".into(),
                    detail: "the nft shell exited".into(),
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                // We can no longer tell which answer belongs to which batch.
                self.stop();
                Err(NftError::Exec {
                    program: "nft -i".into(),
                    detail: format!("no answer within {:?}", self.timeout),
                })
            }
        }
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

/// Counts complete top-level JSON objects in a byte stream (nft's echo writes
/// them back to back, without separators). Aware of strings and escapes, so a
/// brace in an element comment does not confuse it.
#[derive(Default)]
struct ObjectSplitter {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl ObjectSplitter {
    fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut complete = 0;
        for &b in bytes {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' => self.depth += 1,
                b'}' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        complete += 1;
                    }
                }
                _ => {}
            }
        }
        complete
    }
}

#[cfg(test)]
mod tests {
    use super::ObjectSplitter;

    #[test]
    fn objects_are_counted_across_reads_and_despite_braces_in_strings() {
        let mut s = ObjectSplitter::default();
        assert_eq!(s.feed(br#"{"nftables": [{"add": {"comment": "a } \" {"#), 0);
        assert_eq!(s.feed(br#""}}]}{"nftables": []}"#), 2);
        assert_eq!(s.feed(b"{"), 0);
        assert_eq!(s.feed(b"}"), 1);
    }
}
