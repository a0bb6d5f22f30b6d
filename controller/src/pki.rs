//! The controller's certificate authority.
//!
//! Created at first start in the data directory (`ca.pem`, `ca.key`, both
//! 0600, ECDSA P-256). It signs:
//!
//! - the controller's own server certificate (made afresh at every start
//!   for the configured names, plus `localhost`, `127.0.0.1` and `::1`);
//! - agent certificates from the agent's CSR at enrolment (the key never
//!   leaves the host); the CSR's own names are ignored: the identity
//!   `palisade://agent/<tenant>/<site>/<host>` comes from the token;
//! - operator certificates (`palisade://operator/<name>`).
//!
//! See [`crate::identity`] for the encoding and [`identity_from_cert`] for
//! reading it back from a verified peer certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::identity::{HostId, Identity, OperatorId};

/// Lifetime of the CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 86400);
/// Lifetime of agent and operator certificates.
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86400);
/// Lifetime of the server certificate (made afresh at every start).
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 86400);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is invalid: {0}")]
    Csr(rcgen::Error),
    #[error("{0}: the CA key is there but not its certificate, or the other way round; restore both or remove both")]
    Incomplete(PathBuf),
    #[error("peer certificate: {0}")]
    Peer(String),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A certificate and its key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate signed for an agent.
#[derive(Clone, Debug)]
pub struct Signed {
    pub cert_pem: String,
    /// Hex of the DER serial, as [`identity_from_cert`] reads it.
    pub serial: String,
}

pub struct Pki {
    ca_pem: String,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Loads the CA from `dir`, or creates it there.
    pub fn open_or_create(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {}
            (false, false) => {
                let (cert_pem, key_pem) = new_ca()?;
                write_private(&key_path, &key_pem)?;
                write_private(&cert_path, &cert_pem)?;
                tracing::info!(path = %cert_path.display(), "created the controller's CA");
            }
            (true, false) => return Err(PkiError::Incomplete(key_path)),
            (false, true) => return Err(PkiError::Incomplete(cert_path)),
        }
        let ca_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
        let ca_der = pem_blocks(&ca_pem)
            .into_iter()
            .find(|b| b.label == "CERTIFICATE")
            .map(|b| b.der)
            .ok_or_else(|| PkiError::Peer(format!("{}: no certificate", cert_path.display())))?;
        Ok(Pki {
            ca_pem,
            ca_der,
            issuer,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Hex SHA-256 of the CA certificate's DER (what tokens pin).
    pub fn ca_sha256(&self) -> String {
        sha256_hex(&self.ca_der)
    }

    /// A server certificate for `names` (DNS names or addresses) plus the
    /// loopback names.
    pub fn server_cert(&self, names: &[String]) -> Result<CertAndKey> {
        let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for n in names {
            if !all.contains(n) {
                all.push(n.clone());
            }
        }
        let mut params = CertificateParams::new(all)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "palisade controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, SERVER_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR (PEM) as `host`: only the CSR's key is used.
    pub fn sign_agent(&self, csr_pem: &str, host: &HostId) -> Result<Signed> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::Csr)?;
        // The common name is for people (X.509 caps it at 64 characters);
        // the identity is the URI.
        let cn: String = host.host.chars().take(64).collect();
        let params = client_params(&Identity::Agent(host.clone()), &cn)?;
        let cert = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        let (_, serial) = identity_from_cert(cert.der())?;
        Ok(Signed {
            cert_pem: cert.pem(),
            serial,
        })
    }

    /// A key and certificate for operator `op`.
    pub fn operator_cert(&self, op: &OperatorId) -> Result<CertAndKey> {
        let id = Identity::Operator(op.clone());
        let params = client_params(&id, &format!("operator {op}"))?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The PEM bundle `palisade --cert` reads: the operator's certificate,
    /// its key, then the controller's CA.
    pub fn operator_bundle(&self, op: &OperatorId) -> Result<String> {
        let ck = self.operator_cert(op)?;
        let scope = match &op.tenant {
            Some(t) => format!("of tenant {t:?} only"),
            None => "of every tenant".to_string(),
        };
        let name = &op.name;
        Ok(format!(
            "# Palisade operator {name:?} {scope}: client certificate, private key, controller CA.\n\
             # A credential: keep it private. Use: palisade --cert THIS_FILE ...\n{}{}{}",
            ck.cert_pem, ck.key_pem, self.ca_pem
        ))
    }
}

fn new_ca() -> Result<(String, String)> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    // Unique per controller: a certificate from another controller's CA is
    // then an unknown issuer, not a bad signature from ours.
    let id: [u8; 6] = rand::random();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Palisade controller CA {}", hex::encode(id)),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Palisade");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn client_params(id: &Identity, common_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = vec![SanType::URI(id.uri().try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, CLIENT_VALIDITY);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    // A little slack for hosts whose clock runs behind.
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + validity;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x40; // positive, and no leading zero byte to strip
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Writes `text` to `path` readable by the owner only (through a temporary
/// file and a rename, so a crash leaves no half-written file).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Reads the identity and the serial (hex) out of a certificate's DER.
/// Call it only on a certificate whose chain to the CA was verified (the TLS
/// layer did that for peer certificates).
pub fn identity_from_cert(der: &[u8]) -> Result<(Identity, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Peer(format!("unparsable: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Peer(format!("subject alternative names: {e}")))?
        .ok_or_else(|| {
            PkiError::Peer("no palisade identity (no subject alternative name)".into())
        })?;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(parsed) = Identity::from_uri(uri) {
                if found.is_some() {
                    return Err(PkiError::Peer("more than one palisade identity".into()));
                }
                found = Some(parsed.map_err(|e| PkiError::Peer(e.to_string()))?);
            }
        }
    }
    let id =
        found.ok_or_else(|| PkiError::Peer("no palisade identity (no palisade:// URI)".into()))?;
    Ok((id, hex::encode(cert.raw_serial())))
}

/// A new key (PEM) and a CSR (PEM) for it, as an agent makes them.
pub fn new_key_and_csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One `-----BEGIN X-----` block of a PEM text.
#[derive(Clone, Debug)]
pub struct PemBlock {
    pub label: String,
    /// The block as text, markers included.
    pub pem: String,
    pub der: Vec<u8>,
}

/// The PEM blocks of `text`, in order; text outside blocks (comments) is skipped.
pub fn pem_blocks(text: &str) -> Vec<PemBlock> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut pem = format!("{}\n", line.trim());
        let mut closed = false;
        for l in lines.by_ref() {
            pem.push_str(l.trim());
            pem.push('\n');
            if l.trim() == end {
                closed = true;
                break;
            }
            body.push_str(l.trim());
        }
        if !closed {
            break;
        }
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body) {
            out.push(PemBlock {
                label: label.to_string(),
                pem,
                der,
            });
        }
    }
    out
}

/// An operator bundle split up: certificate, key, CA.
pub struct Bundle {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// Splits a bundle: the first certificate is the client's, the key is the
/// first private key, every other certificate is a CA.
pub fn parse_bundle(text: &str) -> Option<Bundle> {
    let blocks = pem_blocks(text);
    let mut certs = blocks.iter().filter(|b| b.label == "CERTIFICATE");
    let cert = certs.next()?.pem.clone();
    let ca: String = certs.map(|b| b.pem.as_str()).collect();
    let key = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY"))?;
    if ca.is_empty() {
        return None;
    }
    Some(Bundle {
        cert_pem: cert,
        key_pem: key.pem.clone(),
        ca_pem: ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::open_or_create(dir.path()).unwrap();
        let b = Pki::open_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem());
        for f in ["ca.pem", "ca.key"] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert!(matches!(
            Pki::open_or_create(dir.path()),
            Err(PkiError::Incomplete(_))
        ));
    }

    #[test]
    fn agent_identity_comes_from_the_ca_not_the_csr() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open_or_create(dir.path()).unwrap();
        // The CSR claims another name: ignored.
        let (_key, csr) = new_key_and_csr("palisade://agent/evil/x/y").unwrap();
        let host = HostId::new(
            "acme",
            "hq",
            &format!("pbx1.{}.example.com", "x".repeat(80)),
        );
        let signed = pki.sign_agent(&csr, &host).unwrap();
        let der = &pem_blocks(&signed.cert_pem)[0].der;
        let (id, serial) = identity_from_cert(der).unwrap();
        assert_eq!(id, Identity::Agent(host.clone()));
        assert_eq!(serial, signed.serial);
        assert_eq!(serial.len(), 32);
        // A second certificate for the same host has another serial.
        assert_ne!(pki.sign_agent(&csr, &host).unwrap().serial, serial);
    }

    #[test]
    fn garbage_csr_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open_or_create(dir.path()).unwrap();
        let err = pki
            .sign_agent(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &HostId::new("a", "b", "c"),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::Csr(_)), "{err}");
    }

    #[test]
    fn operator_bundle_splits_back() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open_or_create(dir.path()).unwrap();
        let bundle =
            parse_bundle(&pki.operator_bundle(&OperatorId::fleet("alice")).unwrap()).unwrap();
        assert_eq!(bundle.ca_pem.trim(), pki.ca_pem().trim());
        let der = &pem_blocks(&bundle.cert_pem)[0].der;
        assert_eq!(
            identity_from_cert(der).unwrap().0,
            Identity::Operator(OperatorId::fleet("alice"))
        );
        let server = pki.server_cert(&["ctl.example.com".into()]).unwrap();
        // A server certificate carries no palisade identity.
        assert!(identity_from_cert(&pem_blocks(&server.cert_pem)[0].der).is_err());
    }
}
