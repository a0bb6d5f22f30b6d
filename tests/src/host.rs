//! Checks and lookups about the machine running the tests.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Fails with an explanation unless end-to-end tests can run here: the
/// process is root and `ip` (iproute2) and `nft` (nftables) are on `PATH`,
/// and the kernel has IPv6.
///
/// End-to-end tests call this first and propagate the error: a firewall test
/// that quietly skips on a misconfigured CI machine looks exactly like one
/// that passes, so these tests fail loudly instead.
pub fn require_root_tools() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "end-to-end tests must run as root: they create network namespaces, \
             veth links and nftables rulesets (try `sudo -E cargo test ...`)"
        );
    }
    require_tool("ip", &["-V"], "iproute2")?;
    require_tool("nft", &["--version"], "nftables")?;
    if !Path::new("/proc/sys/net/ipv6").exists() {
        bail!("the kernel has no IPv6 (booted with ipv6.disable=1?); the tests cover IPv6 too");
    }
    Ok(())
}

fn require_tool(program: &str, version_args: &[&str], package: &str) -> Result<()> {
    match Command::new(program).args(version_args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "`{program} {}` failed ({}): {}",
            version_args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("`{program}` not found in PATH: install the `{package}` package")
        }
        Err(e) => Err(e).with_context(|| format!("cannot run `{program}`")),
    }
}

/// Fails naming what to install unless each `(program, args, install)`
/// runs. Only whether it starts matters, not its exit status (`sipp -v`
/// exits 99, for one).
pub(crate) fn require_programs(tools: &[(&str, &[&str], &str)]) -> Result<()> {
    for (program, args, install) in tools {
        match Command::new(program)
            .args(*args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                bail!("`{program}` not found in PATH: install it (`{install}`)")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot run `{program}`")),
        }
    }
    Ok(())
}

/// Path of a binary of this workspace (e.g. `"palisade-agent"`) built into
/// the same target directory and profile as the running test executable.
///
/// Cargo only provides `CARGO_BIN_EXE_*` for binaries of the package under
/// test, and the agent lives in another package, so the path is derived from
/// the test executable instead: that is `target/<profile>/deps/<test>-<hash>`,
/// and binaries sit in `target/<profile>/`. Cargo does not build other
/// packages' binaries for `cargo test -p palisade-tests`, hence the hint in
/// the error.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running test executable")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "workspace binary `{name}` not found at {}: build it with \
             `cargo build --workspace --bins` (same profile as the tests) first",
            path.display()
        );
    }
    Ok(path)
}
