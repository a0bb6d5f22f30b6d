//! Enrolment tokens, as `palisade token create` prints them:
//! `pal1.` + base64url (no padding) of a JSON object
//! `{"url", "tenant", "site", "secret", "ca_sha256", "exp"}`.
//!
//! The token is sent to the controller as given (the controller checks the
//! secret and that it was not used before); the agent reads it for where to
//! go (`url`), what to trust (`ca_sha256`, the SHA-256 of the controller CA's
//! DER) and to refuse an expired one before sending anything.

use base64::Engine;
use serde::Deserialize;

pub const PREFIX: &str = "pal1.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token as given, what `Enroll` sends.
    pub raw: String,
    /// `https://host:port`.
    pub url: String,
    pub tenant: String,
    pub site: String,
    /// SHA-256 of the controller CA certificate (DER): the pin.
    pub ca_sha256: [u8; 32],
    /// Unix seconds.
    pub exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not an enrolment token: it must start with `{PREFIX}` (copy it whole from `palisade token create`)")]
    Prefix,
    #[error("malformed enrolment token: {0}")]
    Malformed(String),
    #[error("the enrolment token expired at {exp} ({ago} s ago); ask for a new one (`palisade token create`)")]
    Expired { exp: u64, ago: u64 },
}

#[derive(Deserialize)]
struct Claims {
    url: String,
    tenant: String,
    site: String,
    secret: String,
    ca_sha256: String,
    exp: u64,
}

impl Token {
    /// Parses `text` (surrounding white space allowed) and refuses it when
    /// malformed or expired at `now` (Unix seconds).
    pub fn parse(text: &str, now: u64) -> Result<Token, TokenError> {
        let raw = text.trim();
        let body = raw.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let bad = |what: String| TokenError::Malformed(what);
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body.trim_end_matches('='))
            .map_err(|e| bad(format!("not base64url: {e}")))?;
        let c: Claims = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("not the expected JSON: {e}")))?;
        for (field, value) in [
            ("url", &c.url),
            ("tenant", &c.tenant),
            ("site", &c.site),
            ("secret", &c.secret),
        ] {
            if value.trim().is_empty() {
                return Err(bad(format!("`{field}` is empty")));
            }
        }
        if !c.url.starts_with("https://") {
            return Err(bad(format!(
                "`url` must be https://HOST:PORT, not {:?}",
                c.url
            )));
        }
        let pin = hex::decode(&c.ca_sha256)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("`ca_sha256` is not 64 hexadecimal digits".into()))?;
        if c.exp <= now {
            return Err(TokenError::Expired {
                exp: c.exp,
                ago: now - c.exp,
            });
        }
        Ok(Token {
            raw: raw.to_string(),
            url: c.url,
            tenant: c.tenant,
            site: c.site,
            ca_sha256: pin,
            exp: c.exp,
        })
    }
}

/// Makes a token (tests, and the shape `palisade token create` must produce).
pub fn encode(
    url: &str,
    tenant: &str,
    site: &str,
    secret: &str,
    ca_sha256: &[u8],
    exp: u64,
) -> String {
    let json = serde_json::json!({
        "url": url,
        "tenant": tenant,
        "site": site,
        "secret": secret,
        "ca_sha256": hex::encode(ca_sha256),
        "exp": exp,
    });
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: [u8; 32] = [0xab; 32];

    #[test]
    fn parses_a_good_token() {
        let t = encode("https://10.0.0.1:7443", "acme", "hq", "00ff", &PIN, 2000);
        let tok = Token::parse(&format!("  {t}\n"), 1000).unwrap();
        assert_eq!(tok.url, "https://10.0.0.1:7443");
        assert_eq!((tok.tenant.as_str(), tok.site.as_str()), ("acme", "hq"));
        assert_eq!(tok.ca_sha256, PIN);
        assert_eq!(tok.exp, 2000);
        assert_eq!(tok.raw, t, "sent as given, without the white space");
    }

    #[test]
    fn refuses_an_expired_token() {
        let t = encode("https://c:1", "acme", "hq", "00", &PIN, 1000);
        let e = Token::parse(&t, 1000).unwrap_err();
        assert_eq!(e, TokenError::Expired { exp: 1000, ago: 0 });
        let e = Token::parse(&t, 1060).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(e.to_string().contains("60 s ago"), "{e}");
    }

    #[test]
    fn refuses_malformed_tokens_clearly() {
        assert_eq!(Token::parse("hello", 0).unwrap_err(), TokenError::Prefix);
        assert_eq!(Token::parse("", 0).unwrap_err(), TokenError::Prefix);
        let e = Token::parse("pal1.***", 0).unwrap_err();
        assert!(e.to_string().contains("not base64url"), "{e}");
        let not_json = format!(
            "pal1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("[1,2]")
        );
        let e = Token::parse(&not_json, 0).unwrap_err();
        assert!(e.to_string().contains("not the expected JSON"), "{e}");
        let short_pin = encode("https://c:1", "a", "s", "00", &[1, 2, 3], 10);
        let e = Token::parse(&short_pin, 0).unwrap_err();
        assert!(e.to_string().contains("ca_sha256"), "{e}");
        let plain = encode("http://c:1", "a", "s", "00", &PIN, 10);
        let e = Token::parse(&plain, 0).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let no_tenant = encode("https://c:1", "", "s", "00", &PIN, 10);
        let e = Token::parse(&no_tenant, 0).unwrap_err();
        assert!(e.to_string().contains("`tenant` is empty"), "{e}");
        // A truncated copy and paste.
        let t = encode("https://c:1", "a", "s", "00", &PIN, 10);
        let e = Token::parse(&t[..t.len() - 7], 0).unwrap_err();
        assert!(matches!(e, TokenError::Malformed(_)), "{e}");
    }
}
