//! `palisade-agent enroll`: token → a key made here, a certificate signed by
//! the controller's CA, kept in `<state_dir>/controller/`.

use super::identity::{self, Enrolled, Identity};
use super::tls::{self, PinnedCa};
use super::token::Token;
use anyhow::{bail, Context};
use palisade_proto::v1::agent_service_client::AgentServiceClient;
use palisade_proto::v1::EnrollRequest;
use std::path::Path;
use std::sync::Arc;

pub struct EnrollOptions {
    pub token: String,
    /// Overrides the token's URL (e.g. another address of the controller).
    pub controller: Option<String>,
    /// The name the host wants (default: its host name).
    pub hostname: Option<String>,
}

/// A PKCS#10 request for `key`, named after the host. The controller decides
/// what goes in the certificate; the request proves possession of the key.
pub fn csr_pem(key: &rcgen::KeyPair, hostname: &str) -> anyhow::Result<String> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    Ok(params
        .serialize_request(key)
        .context("cannot make the certificate request")?
        .pem()?)
}

fn host_name() -> anyhow::Result<String> {
    let name = nix::unistd::gethostname().context("cannot read the host name")?;
    let name = name.to_string_lossy().trim().to_string();
    if name.is_empty() {
        bail!("the host has no name; give one with --hostname");
    }
    Ok(name)
}

/// The public key (SubjectPublicKeyInfo DER) of a PEM certificate.
fn public_key_of(cert_pem: &str) -> anyhow::Result<Vec<u8>> {
    let der = tls::certs(cert_pem, "the certificate the controller signed")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).map_err(|e| {
        anyhow::anyhow!("the certificate the controller signed does not parse: {e}")
    })?;
    Ok(cert.public_key().raw.to_vec())
}

pub async fn enroll(state_dir: &Path, opts: EnrollOptions) -> anyhow::Result<Identity> {
    let token = Token::parse(&opts.token, crate::state::now_unix())?;
    let url = opts.controller.unwrap_or_else(|| token.url.clone());
    let hostname = match opts.hostname {
        Some(h) => h,
        None => host_name()?,
    };
    let key = rcgen::KeyPair::generate().context("cannot generate the host's key")?;
    let csr = csr_pem(&key, &hostname)?;

    let pinned = Arc::new(PinnedCa::new(token.ca_sha256));
    let channel = tls::connect(&url, tls::pinned_config(pinned.clone())?).await?;
    let reply = AgentServiceClient::new(channel)
        .enroll(EnrollRequest {
            token: token.raw.clone(),
            csr_pem: csr,
            hostname: hostname.clone(),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the controller refused the enrolment ({:?}): {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();

    // What the controller hands back must be what the token promised and
    // what this host asked for.
    let ca = tls::certs(&reply.ca_pem, "the controller's CA")?;
    if tls::fingerprint(&ca[0]) != token.ca_sha256 {
        bail!(
            "the CA the controller returned ({}) is not the one the token pins ({}); nothing stored",
            hex::encode(tls::fingerprint(&ca[0])),
            hex::encode(token.ca_sha256)
        );
    }
    debug_assert!(pinned.found().is_some(), "the handshake checked the pin");
    if public_key_of(&reply.certificate_pem)? != rcgen::PublicKeyData::subject_public_key_info(&key)
    {
        bail!("the certificate the controller returned is not for this host's key; nothing stored");
    }
    if reply.tenant != token.tenant || reply.site != token.site {
        bail!(
            "the controller enrolled this host as {}/{}, the token was for {}/{}; nothing stored",
            reply.tenant,
            reply.site,
            token.tenant,
            token.site
        );
    }
    let identity = Identity {
        url,
        tenant: reply.tenant,
        site: reply.site,
        host: if reply.host.is_empty() {
            hostname
        } else {
            reply.host
        },
        ca_sha256: hex::encode(token.ca_sha256),
        enrolled_at: crate::state::now_unix(),
    };
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    identity::store(
        state_dir,
        &Enrolled {
            identity: identity.clone(),
            key_pem: key.serialize_pem(),
            cert_pem: reply.certificate_pem,
            ca_pem: reply.ca_pem,
            generation: 0,
        },
    )?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;

    #[test]
    fn the_csr_parses_and_is_signed_by_the_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = csr_pem(&key, "pbx-1.example").unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{pem}"
        );
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        csr.verify_signature().expect("signed with the host's key");
        let info = &csr.certification_request_info;
        assert_eq!(
            info.subject_pki.raw,
            key.subject_public_key_info().as_slice()
        );
        let cn = info.subject.iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "pbx-1.example");
        // The key that stays on the host round-trips through its PEM.
        let again = rcgen::KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert_eq!(again.der_bytes(), key.der_bytes());
    }

    #[tokio::test]
    async fn refuses_bad_tokens_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let expired =
            super::super::token::encode("https://127.0.0.1:1", "t", "s", "00", &[0; 32], 1);
        let e = enroll(
            dir.path(),
            EnrollOptions {
                token: expired,
                controller: None,
                hostname: Some("h".into()),
            },
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(identity::load(dir.path()).unwrap().is_none());
    }
}
