//! Who is calling, from the verified TLS peer certificate (or, for
//! operators without one, a bearer token).
//!
//! The TLS layer accepts a connection without a client certificate (so that
//! `Enroll` works) and otherwise verifies the chain to the controller's CA;
//! every RPC but `Enroll` then requires an identity here.

use std::path::Path;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::identity::{HostId, Identity, OperatorId};
use crate::pki::identity_from_cert;

/// The verified peer's identity and certificate serial; `None` without a
/// client certificate.
pub fn peer<T>(req: &Request<T>) -> Result<Option<(Identity, String)>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    identity_from_cert(leaf)
        .map(Some)
        .map_err(|e| Status::unauthenticated(e.to_string()))
}

/// For the agent API: the host the certificate names, and its serial.
pub fn agent<T>(req: &Request<T>) -> Result<(HostId, String), Status> {
    match peer(req)? {
        Some((Identity::Agent(h), serial)) => Ok((h, serial)),
        Some((Identity::Operator(op), _)) => Err(Status::permission_denied(format!(
            "operator {op} can't open an agent stream; agents use their enrolment certificate"
        ))),
        None => Err(Status::unauthenticated(
            "a client certificate from this controller's CA is required (enrol first: palisade-agent enroll)",
        )),
    }
}

/// Operator bearer tokens (`--operator-tokens FILE`, lines `NAME TOKEN`
/// for an operator of every tenant, `NAME TOKEN TENANT` for one tenant's),
/// kept as SHA-256 hashes.
#[derive(Default, Clone)]
pub struct OperatorTokens(Vec<(OperatorId, [u8; 32])>);

impl OperatorTokens {
    pub fn load(path: &Path) -> Result<OperatorTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<OperatorTokens, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), tenant, None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("line {}: expected `NAME TOKEN [TENANT]`", n + 1));
            };
            let op = match tenant {
                Some(t) => OperatorId::of_tenant(name, t),
                None => OperatorId::fleet(name),
            };
            op.check().map_err(|e| format!("line {}: {e}", n + 1))?;
            if token.len() < 16 {
                return Err(format!(
                    "line {}: the token is shorter than 16 characters",
                    n + 1
                ));
            }
            out.push((op, Sha256::digest(token.as_bytes()).into()));
        }
        Ok(OperatorTokens(out))
    }

    fn find(&self, token: &str) -> Option<&OperatorId> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.0.iter().find(|(_, t)| *t == h).map(|(op, _)| op)
    }
}

/// For the operator API: the operator, from its certificate or its bearer
/// token.
pub fn operator<T>(req: &Request<T>, tokens: &OperatorTokens) -> Result<OperatorId, Status> {
    match peer(req)? {
        Some((Identity::Operator(op), _)) => Ok(op),
        Some((Identity::Agent(h), _)) => Err(Status::permission_denied(format!(
            "agent {h} can't use the operator API"
        ))),
        None => {
            let bearer = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match bearer {
                Some(t) => tokens.find(t.trim()).cloned().ok_or_else(|| {
                    Status::unauthenticated("the operator token is not known to this controller")
                }),
                None => Err(Status::unauthenticated(
                    "operators need a client certificate (palisade-controller operator-cert) or a bearer token",
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_tokens() {
        let t = OperatorTokens::parse(
            "# ops\nalice 0123456789abcdef0123\n\nbob fedcba98765432100000 acme\n",
        )
        .unwrap();
        assert_eq!(
            t.find("0123456789abcdef0123"),
            Some(&OperatorId::fleet("alice"))
        );
        assert_eq!(
            t.find("fedcba98765432100000"),
            Some(&OperatorId::of_tenant("bob", "acme"))
        );
        assert_eq!(t.find("nope"), None);
        assert!(OperatorTokens::parse("bob fedcba98765432100000 ac/me").is_err());
        assert!(OperatorTokens::parse("bob fedcba98765432100000 acme extra").is_err());
        assert!(OperatorTokens::parse("alice short").is_err());
        assert!(OperatorTokens::parse("a/b 0123456789abcdef0123").is_err());
    }
}
