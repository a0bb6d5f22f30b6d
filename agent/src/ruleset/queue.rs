//! Where inline mode's queue lives, outside the pure render.
//!
//! The render marks clear-text SIP of unknown sources; something after the
//! filter chains must hand marked packets to the agent's NFQUEUE. With nft's
//! own `queue` (kernels that have it) that is a base chain in our table. These
//! machines' kernel lacks it, so the fallback is a chain the agent owns in
//! iptables-nft's `security` table (priority 150, after every filter chain),
//! holding one xt NFQUEUE rule per family, jumped to from `security INPUT`.
//! The agent creates it when inline mode comes on and removes it when it goes
//! off; it survives the agent stopping, so `bypass` decides what happens to
//! SIP meanwhile.

use super::apply::{is_missing, Nft};
use palisade_model::inline::{Inline, QueueBackend};
use std::io::Write;
use std::process::{Command, Stdio};

/// The chain the agent owns in the `security` table of `ip` and `ip6`.
pub const XT_CHAIN: &str = "PALISADE_INLINE";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot run `{program}`: {detail} (inline mode on this kernel needs the iptables package, nf_tables backend)")]
    Exec { program: String, detail: String },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs the iptables-nft commands the way nft is run: directly, or through
/// the same wrapper (`ip netns exec NS nft` in tests).
#[derive(Debug, Clone)]
pub struct XtQueue {
    wrapper: Vec<String>,
}

impl XtQueue {
    pub fn new(nft: &Nft) -> XtQueue {
        let (program, prefix) = nft.command_parts();
        let wrapper = match prefix.split_last() {
            Some((last, rest)) if program != "nft" && last == "nft" => {
                std::iter::once(program.to_string())
                    .chain(rest.iter().cloned())
                    .collect()
            }
            _ => Vec::new(),
        };
        XtQueue { wrapper }
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), QueueError> {
        let mut cmd = match self.wrapper.split_first() {
            Some((exe, rest)) => {
                let mut c = Command::new(exe);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let exec = |e: std::io::Error| QueueError::Exec {
            program: program.to_string(),
            detail: e.to_string(),
        };
        let mut child = cmd.spawn().map_err(exec)?;
        if let Some(text) = stdin {
            let _ = child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(exec)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(QueueError::Failed {
                command: format!("{program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Creates or updates the chain and its jump, for both families. The
    /// chain's rule is replaced atomically (`iptables-nft-restore --noflush`
    /// flushes and refills a declared chain in one transaction).
    pub fn ensure(&self, inline: &Inline) -> Result<(), QueueError> {
        let mut rule = format!(
            "-A {XT_CHAIN} -m mark --mark {m:#x}/{m:#x} -m comment --comment \"palisade inline\" -j NFQUEUE --queue-num {q}",
            m = inline.mark,
            q = inline.queue
        );
        if inline.bypass {
            rule.push_str(" --queue-bypass");
        }
        let restore = format!("*security\n:{XT_CHAIN} - [0:0]\n{rule}\nCOMMIT\n");
        for (restore_cmd, cmd) in [
            ("iptables-nft-restore", "iptables-nft"),
            ("ip6tables-nft-restore", "ip6tables-nft"),
        ] {
            self.run(restore_cmd, &["-w", "--noflush"], Some(&restore))?;
            let jump = ["-w", "-t", "security", "-C", "INPUT", "-j", XT_CHAIN];
            if self.run(cmd, &jump, None).is_err() {
                self.run(
                    cmd,
                    &["-w", "-t", "security", "-I", "INPUT", "1", "-j", XT_CHAIN],
                    None,
                )?;
            }
        }
        Ok(())
    }

    /// Removes the jump and the chain; absent ones are fine.
    pub fn remove(&self) -> Result<(), QueueError> {
        for cmd in ["iptables-nft", "ip6tables-nft"] {
            let jump = ["-w", "-t", "security", "-D", "INPUT", "-j", XT_CHAIN];
            while self.run(cmd, &jump, None).is_ok() {}
            for op in ["-F", "-X"] {
                match self.run(cmd, &["-w", "-t", "security", op, XT_CHAIN], None) {
                    Ok(()) => {}
                    Err(QueueError::Failed { stderr, .. })
                        if stderr.contains("No chain") || stderr.contains("does not exist") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Whether the chain is in place (for `show`).
    pub fn present(&self) -> bool {
        self.run(
            "iptables-nft",
            &["-w", "-t", "security", "-C", "INPUT", "-j", XT_CHAIN],
            None,
        )
        .is_ok()
    }
}

/// Whether the kernel has nft's own `queue`: a dry run (`nft -c`, which the
/// kernel validates) of a throwaway table with a queue rule.
pub fn probe_backend(nft: &Nft) -> QueueBackend {
    let probe = "table inet palisade_queue_probe {\n chain c {\n  type filter hook input priority 150; policy accept;\n  queue num 65535 bypass\n }\n}\n";
    match nft.check_text(probe) {
        Ok(()) => QueueBackend::Native,
        Err(e) => {
            let missing = matches!(&e, super::NftError::Rejected { stderr } if is_missing(stderr));
            if !missing {
                tracing::debug!(error = %e, "nft queue probe failed");
            }
            QueueBackend::Xt
        }
    }
}
