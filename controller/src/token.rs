//! Enrolment tokens.
//!
//! `pal1.` followed by base64url (no padding) of a JSON object:
//!
//! ```json
//! {"url":"https://ctl.example.com:7443","tenant":"acme","site":"hq",
//!  "secret":"<64 hex digits: 32 random bytes>",
//!  "ca_sha256":"<hex SHA-256 of the CA certificate's DER>","exp":1767225600}
//! ```
//!
//! The token carries everything `palisade-agent enroll` needs: where the
//! controller is, which CA to pin, and the secret. The controller keeps only
//! the SHA-256 of the secret's 32 bytes; the tenant and site it acts on are
//! the stored ones (editing them in the JSON gains nothing).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "pal1.";

/// Longest token accepted (a real one is about 400 characters).
pub const MAX_LEN: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub url: String,
    pub tenant: String,
    pub site: String,
    pub secret: String,
    pub ca_sha256: String,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a palisade enrolment token (it should start with {PREFIX:?})")]
    Prefix,
    #[error("the enrolment token is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("the enrolment token is damaged (base64: {0})")]
    Base64(String),
    #[error("the enrolment token is damaged (JSON: {0})")]
    Json(String),
    #[error("the enrolment token's secret is not 32 bytes of hex")]
    Secret,
}

impl TokenClaims {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("claims serialize");
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(token: &str) -> Result<TokenClaims, TokenError> {
        let token = token.trim();
        if token.len() > MAX_LEN {
            return Err(TokenError::TooLong);
        }
        let body = token.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Base64(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| TokenError::Json(e.to_string()))
    }

    /// The key the controller stores the token under.
    pub fn secret_hash(&self) -> Result<[u8; 32], TokenError> {
        secret_hash(&self.secret)
    }
}

/// 32 random bytes, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// SHA-256 of the secret's bytes.
pub fn secret_hash(secret_hex: &str) -> Result<[u8; 32], TokenError> {
    let bytes = hex::decode(secret_hex).map_err(|_| TokenError::Secret)?;
    if bytes.len() != 32 {
        return Err(TokenError::Secret);
    }
    Ok(Sha256::digest(&bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_format() {
        let c = TokenClaims {
            url: "https://127.0.0.1:7443".into(),
            tenant: "acme".into(),
            site: "hq".into(),
            secret: new_secret(),
            ca_sha256: "ab".repeat(32),
            exp: 1_700_000_000,
        };
        let t = c.encode();
        assert!(t.starts_with("pal1."));
        assert!(!t.contains('='), "no padding");
        assert_eq!(TokenClaims::decode(&t).unwrap(), c);
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&t[5..])
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        for k in ["url", "tenant", "site", "secret", "ca_sha256", "exp"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(c.secret_hash().unwrap().len(), 32);
    }

    #[test]
    fn damaged_tokens_say_what_is_wrong() {
        assert_eq!(TokenClaims::decode("xyz"), Err(TokenError::Prefix));
        assert!(matches!(
            TokenClaims::decode("pal1.!!!"),
            Err(TokenError::Base64(_))
        ));
        assert!(matches!(
            TokenClaims::decode("pal1.e30"),
            Err(TokenError::Json(_))
        ));
        assert_eq!(secret_hash("abcd"), Err(TokenError::Secret));
        assert_eq!(
            TokenClaims::decode(&"p".repeat(5000)),
            Err(TokenError::TooLong)
        );
    }
}
