//! Serving credentials for the TLS port (15012): loaded from files, or generated once (a
//! self-signed root and a serving certificate it signs) and kept in a directory so restarts and
//! sidecar bootstraps keep trusting the same root.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Config(String),
}

/// PEM material for the TLS server.
pub struct ServingCredentials {
    pub cert_chain_pem: String,
    pub key_pem: String,
    /// The root that signs the serving certificate (what sidecars must trust).
    pub root_cert_path: PathBuf,
    /// When set, clients presenting a certificate are verified against this CA bundle.
    pub client_ca_pem: Option<String>,
}

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CERT_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    std::fs::write(path, text).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads `cert-chain.pem`, `key.pem` and `root-cert.pem` from `dir`, generating all three first
/// when the directory holds none of them. `sans` are the serving certificate's DNS names and IPs.
pub fn load_or_generate(dir: &Path, sans: &[String]) -> Result<ServingCredentials, TlsError> {
    let (cert, key, root) = (
        dir.join(CERT_FILE),
        dir.join(KEY_FILE),
        dir.join(ROOT_CERT_FILE),
    );
    let present = [&cert, &key, &root].iter().filter(|p| p.exists()).count();
    match present {
        3 => {}
        0 => generate(dir, sans)?,
        _ => {
            return Err(TlsError::Config(format!(
                "{} holds only some of {CERT_FILE}, {KEY_FILE}, {ROOT_CERT_FILE}: remove them to regenerate, or provide all three",
                dir.display()
            )));
        }
    }
    Ok(ServingCredentials {
        cert_chain_pem: read(&cert)?,
        key_pem: read(&key)?,
        root_cert_path: root,
        client_ca_pem: None,
    })
}

fn generate(dir: &Path, sans: &[String]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let root_key = KeyPair::generate()?;
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "meshpilot root CA");
    root_params
        .distinguished_name
        .push(DnType::OrganizationName, "meshpilot");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key)?;

    let serving_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "meshpilot");
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => san.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::new(root_params, root_key);
    let serving = params.signed_by(&serving_key, &issuer)?;

    write(&dir.join(ROOT_CERT_FILE), &root.pem())?;
    write(&dir.join(CERT_FILE), &serving.pem())?;
    let key = dir.join(KEY_FILE);
    write(&key, &serving_key.serialize_pem())?;
    // Only the server reads its key.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        TlsError::Io {
            path: key.clone(),
            source,
        }
    })?;
    Ok(())
}

fn config_error(what: &str, error: impl std::fmt::Display) -> TlsError {
    TlsError::Config(format!("{what}: {error}"))
}

/// A rustls server configuration serving `credentials` with the one ALPN protocol `alpn`
/// (`h2` for xDS, `http/1.1` for the webhook). With `client_ca_pem`, a client certificate is
/// verified against it when a client presents one; clients without one are let in, as sidecars
/// are before their certificate is issued.
pub fn server_config(
    credentials: &ServingCredentials,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(credentials.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("reading the serving certificate chain", e))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
        .map_err(|e| config_error("reading the serving key", e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("TLS protocol versions", e))?;
    let builder = match &credentials.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let cert = cert.map_err(|e| config_error("client CA", e))?;
                roots.add(cert).map_err(|e| config_error("client CA", e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| config_error("client CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| config_error("the serving certificate and key do not match", e))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reloads_the_same_root() {
        let dir = std::env::temp_dir().join(format!("meshpilot-tls-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_generate(&dir, &sans).unwrap();
        let root = std::fs::read_to_string(&first.root_cert_path).unwrap();
        let second = load_or_generate(&dir, &sans).unwrap();
        assert_eq!(
            std::fs::read_to_string(&second.root_cert_path).unwrap(),
            root
        );
        assert_eq!(first.cert_chain_pem, second.cert_chain_pem);
        assert!(root.contains("BEGIN CERTIFICATE"));
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        assert!(
            load_or_generate(&dir, &sans).is_err(),
            "partial material is refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_config_takes_a_client_ca_and_names_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("meshpilot-tls-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut credentials = load_or_generate(&dir, &["localhost".to_string()]).unwrap();
        let root = std::fs::read_to_string(&credentials.root_cert_path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let config = server_config(&credentials, b"h2").unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);

        credentials.client_ca_pem = Some(root);
        assert!(server_config(&credentials, b"h2").is_ok());

        credentials.client_ca_pem = Some("not a certificate".into());
        let error = server_config(&credentials, b"h2").unwrap_err().to_string();
        assert!(error.starts_with("client CA: "), "{error}");

        credentials.client_ca_pem = None;
        credentials.key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        let error = server_config(&credentials, b"h2").unwrap_err().to_string();
        assert!(error.contains("serving"), "{error}");
    }
}
