//! Running `nft`: the one place the ruleset code touches the kernel.
//!
//! Every change is one `nft -j -f -` call, which nftables applies as a single
//! atomic transaction: either all of it is in force afterwards or none of it.

use super::live::{LiveParseError, LiveTable};
use super::render::TABLE;
use nftables::schema::Nftables;
use std::time::Instant;

/// nft's way of saying that the table or set does not exist.
pub fn is_missing(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "cannot run `{program}`: {detail} (is the nftables package installed and are we root?)"
    )]
    Exec { program: String, detail: String },
    #[error("nft rejected the transaction, nothing was changed: {stderr}")]
    Rejected { stderr: String },
    #[error(transparent)]
    Parse(#[from] LiveParseError),
}

/// How to invoke nft. Tests and benchmarks point it at a network namespace.
#[derive(Debug, Clone)]
pub struct Nft {
    program: String,
    prefix: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: "nft".into(),
            prefix: Vec::new(),
        }
    }
}

impl Nft {
    /// Runs `program prefix… nft-args`, e.g. `ip netns exec NS nft`.
    pub fn with_command(program: impl Into<String>, prefix: Vec<String>) -> Nft {
        Nft {
            program: program.into(),
            prefix,
        }
    }

    /// The program and the arguments before nft's own.
    pub fn command_parts(&self) -> (&str, &[String]) {
        (&self.program, &self.prefix)
    }

    /// Runs `nft -j ARGS`; `None` when the object does not exist.
    fn list_json(&self, args: &[&str]) -> Result<Option<String>, NftError> {
        let output = std::process::Command::new(&self.program)
            .args(&self.prefix)
            .arg("-j")
            .args(args)
            .output()
            .map_err(|e| NftError::Exec {
                program: self.program.clone(),
                detail: e.to_string(),
            })?;
        if output.status.success() {
            return Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if is_missing(&stderr) {
            Ok(None)
        } else {
            Err(NftError::Rejected { stderr })
        }
    }

    /// The full JSON listing of the agent's table (every element of every set),
    /// or `None` when it does not exist. Costs about 0.5 s per 100,000 elements.
    /// A dry run of `text` (nft syntax): the kernel validates it, nothing is
    /// changed.
    pub fn check_text(&self, text: &str) -> Result<(), NftError> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let exec = |e: std::io::Error| NftError::Exec {
            program: self.program.clone(),
            detail: e.to_string(),
        };
        let mut child = Command::new(&self.program)
            .args(&self.prefix)
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        let _ = child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes());
        let output = child.wait_with_output().map_err(exec)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NftError::Rejected {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    pub fn list_raw(&self) -> Result<Option<String>, NftError> {
        self.list_json(&["list", "table", "inet", TABLE])
    }

    /// The whole table, elements included.
    pub fn list(&self) -> Result<Option<LiveTable>, NftError> {
        match self.list_raw()? {
            Some(json) => Ok(Some(LiveTable::parse(&json)?)),
            None => Ok(None),
        }
    }

    /// Chains, rules and set definitions without set contents (`nft -t`): what the
    /// policy half of a plan needs, at a fraction of a full listing's cost.
    pub fn list_terse(&self) -> Result<Option<LiveTable>, NftError> {
        match self.list_json(&["-t", "list", "table", "inet", TABLE])? {
            Some(json) => Ok(Some(LiveTable::parse(&json)?)),
            None => Ok(None),
        }
    }

    /// The raw elements of one set (a few ms however large the other sets are).
    /// nft 1.0.6 fails on several `list` commands in one batch, hence one call each.
    pub fn list_set(&self, name: &str) -> Result<Vec<serde_json::Value>, NftError> {
        let Some(json) = self.list_json(&["list", "set", "inet", TABLE, name])? else {
            return Ok(Vec::new());
        };
        Ok(LiveTable::parse(&json)?
            .sets
            .remove(name)
            .unwrap_or_default())
    }

    /// Applies one transaction atomically (`nft -j -f -`). nft's own message is
    /// kept in the error: it names the object it refused.
    pub fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let started = Instant::now();
        let payload = serde_json::to_vec(batch).expect("nft batches serialize");
        let exec = |e: std::io::Error| NftError::Exec {
            program: self.program.clone(),
            detail: e.to_string(),
        };
        let mut child = Command::new(&self.program)
            .args(&self.prefix)
            .args(["-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec)?;
        let written = child.stdin.take().expect("piped").write_all(&payload);
        let output = child.wait_with_output().map_err(exec)?;
        let result = if output.status.success() {
            written.map_err(exec)
        } else {
            Err(NftError::Rejected {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        };
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("palisade_nft_transaction_seconds").record(seconds);
        if result.is_err() {
            metrics::counter!("palisade_nft_transactions_rejected_total").increment(1);
        }
        tracing::debug!(
            bytes = payload.len(),
            seconds,
            ok = result.is_ok(),
            "nft transaction"
        );
        result
    }
}
