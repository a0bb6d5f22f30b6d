//! TLS to the controller: rustls (ring), driven by our own connector so that
//! both calls trust exactly what they should.
//!
//! * Enrolment has no CA yet, only the token's pin. [`PinnedCa`] accepts the
//!   controller's chain only if one of its certificates has the pinned DER
//!   SHA-256, and then verifies the chain (signatures, dates, the server's
//!   name) with that certificate as the only root. No client certificate.
//! * Sync: the CA stored at enrolment is the only root, and the host
//!   presents its certificate (mutual TLS).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("controller URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("{what}: {why}")]
    Pem { what: &'static str, why: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot reach the controller at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The certificates of a PEM text, in order.
pub fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            why: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Accepts the controller's chain only if it holds the CA with the pinned
/// fingerprint, and the chain verifies up to it. Keeps that CA for the caller.
#[derive(Debug)]
pub struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCa {
    pub fn new(pin: [u8; 32]) -> PinnedCa {
        PinnedCa {
            pin,
            provider: provider(),
            found: Mutex::new(None),
        }
    }

    /// The pinned CA as the controller presented it, once a handshake passed.
    pub fn found(&self) -> Option<CertificateDer<'static>> {
        self.found.lock().expect("not poisoned").clone()
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's certificate chain holds no CA with the token's fingerprint {} \
                     (a wrong controller, or one that does not send its CA in the chain)",
                    hex::encode(self.pin)
                ))
            })?
            .clone()
            .into_owned();
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *self.found.lock().expect("not poisoned") = Some(ca);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Enrolment: the pinned CA, no client certificate.
pub fn pinned_config(pinned: Arc<PinnedCa>) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(pinned)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Sync: the stored CA as the only root, the host's certificate and key.
pub fn mutual_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs(ca_pem, "the controller's CA (ca.pem)")? {
        roots.add(ca)?;
    }
    let chain = certs(cert_pem, "the host's certificate (cert.pem)")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "the host's key (key.pem)",
        why: e.to_string(),
    })?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `https://host:port` → (host, port). IPv6 literals come in brackets.
pub fn split_url(url: &str) -> Result<(String, u16), TlsError> {
    let bad = |why: &str| TlsError::Url {
        url: url.to_string(),
        why: why.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("the controller is reached over https://"));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// A gRPC channel to `url` over TLS with `config`. The connection is made
/// now, so a wrong certificate or pin shows up here.
pub async fn connect(url: &str, config: ClientConfig) -> Result<Channel, TlsError> {
    let (host, port) = split_url(url)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|_| TlsError::Url {
            url: url.to_string(),
            why: format!("{host:?} is not a host name or address"),
        })?
        .to_owned();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, name, host) = (tls.clone(), name.clone(), host.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    // TLS is ours (the connector), so tonic is told plain http; the
    // requests still say https.
    let authority = url.trim_start_matches("https://");
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|source| TlsError::Connect {
            url: url.to_string(),
            source,
        })?
        .origin(url.parse().expect("checked by split_url"))
        .connect_timeout(Duration::from_secs(10))
        // A controller that vanished without closing (power cut, cable) is
        // noticed within ~30 s instead of the TCP timeout's 15 minutes.
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(15))
        .keep_alive_while_idle(true);
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|source| TlsError::Connect {
            url: url.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("https://10.0.0.1:7443").unwrap(),
            ("10.0.0.1".to_string(), 7443)
        );
        assert_eq!(
            split_url("https://[fd00::1]:7443").unwrap(),
            ("fd00::1".to_string(), 7443)
        );
        assert_eq!(
            split_url("https://ctl.example.net").unwrap(),
            ("ctl.example.net".to_string(), 443)
        );
        assert!(split_url("http://10.0.0.1:7443").is_err());
        assert!(split_url("nonsense url").is_err());
    }
}
