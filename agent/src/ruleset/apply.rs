//! Running `nft`: the one place the ruleset code touches the kernel.
//!
//! Every change is one `nft -j -f -` call, which nftables applies as a single
//! atomic transaction: either all of it is in force afterwards or none of it.

use super::live::{LiveParseError, LiveTable};
use super::render::TABLE;
use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;
use std::time::Instant;

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

fn map_err(e: NftablesError) -> NftError {
    match e {
        NftablesError::NftFailed { stderr, .. } => NftError::Rejected {
            stderr: stderr.trim().to_string(),
        },
        NftablesError::NftExecution { program, inner } => NftError::Exec {
            program: program.to_string_lossy().into_owned(),
            detail: inner.to_string(),
        },
        other => NftError::Exec {
            program: "nft".into(),
            detail: other.to_string(),
        },
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

    /// The raw JSON listing of the agent's table, or `None` when it does not exist.
    pub fn list_raw(&self) -> Result<Option<String>, NftError> {
        let output = std::process::Command::new(&self.program)
            .args(&self.prefix)
            .args(["-j", "list", "table", "inet", TABLE])
            .output()
            .map_err(|e| NftError::Exec {
                program: self.program.clone(),
                detail: e.to_string(),
            })?;
        if output.status.success() {
            return Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if stderr.contains("No such file or directory") {
            Ok(None)
        } else {
            Err(NftError::Rejected { stderr })
        }
    }

    pub fn list(&self) -> Result<Option<LiveTable>, NftError> {
        match self.list_raw()? {
            Some(json) => Ok(Some(LiveTable::parse(&json)?)),
            None => Ok(None),
        }
    }

    /// Applies one transaction atomically.
    pub fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        let started = Instant::now();
        let result = helper::apply_ruleset_with_args(
            batch,
            Some(self.program.as_str()),
            self.prefix.iter().map(String::as_str),
        )
        .map_err(map_err);
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!("palisade_nft_transaction_seconds").record(seconds);
        if result.is_err() {
            metrics::counter!("palisade_nft_transactions_rejected_total").increment(1);
        }
        tracing::debug!(
            objects = batch.objects.len(),
            seconds,
            ok = result.is_ok(),
            "nft transaction"
        );
        result
    }
}
