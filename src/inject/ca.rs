//! The TLS of an intercepted connection (issue 21): the per-daemon CA and
//! its leaves (the agent's side), the verifying client (the host's side),
//! and the files a session trusts.
//!
//! The CA is created once per state dir; its private key is written 0600
//! there, read back only by the daemon, and never given to a session (a
//! session gets the certificate alone). Leaves carry exactly the host (a
//! DNS name or an IP address SAN), live in memory only and are cached per
//! host. The agent's side offers ALPN `http/1.1` only (the interception
//! parses HTTP/1.1); the host's side verifies with the host's roots plus
//! the operator's `--egress-ca-file`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::egress::policy::Host;

/// The CA's key, in the state dir's `ca/` folder.
const KEY_FILE: &str = "ca-key.pem";
/// The CA's certificate next to it.
const CERT_FILE: &str = "ca.pem";
/// How long a leaf is valid, in days, and when a cached one is replaced.
const LEAF_DAYS: i64 = 30;
const LEAF_REFRESH_SECS: i64 = 24 * 3600;
/// How long the CA is valid, in days.
const CA_DAYS: i64 = 3650;

/// The ALPN protocol both sides speak.
const HTTP11: &[u8] = b"http/1.1";

/// Why the TLS material cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading `{path}`: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing `{path}`: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the egress CA key `{path}` is not owned by agentd's user with mode 0600 (hint: it signs what sessions trust; fix its mode, or remove `{dir}` to make a new CA)",
        dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    KeyMode { path: PathBuf },
    #[error(
        "the egress CA in `{dir}` is unusable: {why} (hint: remove the folder to make a new CA; running sessions must be restarted)"
    )]
    Corrupt { dir: PathBuf, why: String },
    #[error(
        "`{path}` holds no PEM certificate (hint: --egress-ca-file takes PEM `CERTIFICATE` blocks)"
    )]
    NoCerts { path: PathBuf },
    #[error("`{path}`: {why} (hint: --egress-ca-file takes PEM `CERTIFICATE` blocks)")]
    BadCerts { path: PathBuf, why: String },
    #[error("making a certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The crypto provider of both sides: ring, which builds here without
/// cmake (aws-lc-rs needs it). rustls deprecates ring's provider only for
/// lacking post-quantum key exchange; moving to aws-lc-rs is this one line.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The date `days` from today (UTC) as rcgen takes it.
fn date(days: i64) -> (i32, u8, u8) {
    let d = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(days * 24))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    (
        i32::from(d.year()),
        d.month().unsigned_abs(),
        d.day().unsigned_abs(),
    )
}

fn validity(params: &mut CertificateParams, days: i64) {
    let (y, m, d) = date(-1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date(days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

fn generate_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

/// A leaf and when it was made (Unix seconds).
type Leaf = (Arc<ServerConfig>, i64);

/// The daemon's CA: signs a leaf for each intercepted host.
pub struct DaemonCa {
    /// The CA certificate (what sessions trust).
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Server configurations by host (as text), each with its leaf.
    leaves: Mutex<HashMap<String, Leaf>>,
}

impl std::fmt::Debug for DaemonCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonCa")
    }
}

impl DaemonCa {
    /// The CA of `dir` (the state dir's `ca/`, created 0700 if absent):
    /// read back when both files are there, else made and written (the key
    /// 0600 first, then the certificate, so a crash between leaves a
    /// folder that is simply made again).
    pub fn load_or_create(dir: &Path) -> Result<DaemonCa, CaError> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CaError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        if key_path.exists() && cert_path.exists() {
            return DaemonCa::load(dir, &key_path, &cert_path);
        }
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = CertificateParams::default();
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).map_err(|e| CaError::Generate(e.to_string()))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "agentd");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("agentd egress CA {}", crate::fsutil::random_hex()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(generate_err)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        crate::fsutil::write_atomic(&key_path, key_pem.as_bytes(), 0o600).map_err(|source| {
            CaError::Write {
                path: key_path.clone(),
                source,
            }
        })?;
        crate::fsutil::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644).map_err(
            |source| CaError::Write {
                path: cert_path.clone(),
                source,
            },
        )?;
        DaemonCa::load(dir, &key_path, &cert_path)
    }

    fn load(dir: &Path, key_path: &Path, cert_path: &Path) -> Result<DaemonCa, CaError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| CaError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let meta = std::fs::symlink_metadata(key_path).map_err(|source| CaError::Read {
            path: key_path.to_path_buf(),
            source,
        })?;
        if !meta.is_file()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o077 != 0
        {
            return Err(CaError::KeyMode {
                path: key_path.to_path_buf(),
            });
        }
        let corrupt = |why: String| CaError::Corrupt {
            dir: dir.to_path_buf(),
            why,
        };
        let key_pem = Zeroizing::new(read(key_path)?);
        let key_text =
            std::str::from_utf8(&key_pem).map_err(|_| corrupt("the key is not PEM".into()))?;
        let key = KeyPair::from_pem(key_text).map_err(|e| corrupt(format!("the key: {e}")))?;
        let cert_pem = String::from_utf8(read(cert_path)?)
            .map_err(|_| corrupt("the certificate is not PEM".into()))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| corrupt(format!("the certificate: {e}")))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| corrupt(format!("the certificate: {e}")))?;
        Ok(DaemonCa {
            cert_der,
            cert_pem,
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate as PEM (`NODE_EXTRA_CA_CERTS`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The agent-side TLS configuration for `host`: its leaf (made, or
    /// taken from the cache while younger than a day), ALPN `http/1.1`.
    pub fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, CaError> {
        let now = jiff::Timestamp::now().as_second();
        let mut leaves = crate::sync::lock(&self.leaves);
        let key = host.to_string();
        if let Some((config, made)) = leaves.get(&key)
            && now - made < LEAF_REFRESH_SECS
        {
            return Ok(Arc::clone(config));
        }
        let config = self.make_leaf(host)?;
        leaves.insert(key, (Arc::clone(&config), now));
        Ok(config)
    }

    fn make_leaf(&self, host: &Host) -> Result<Arc<ServerConfig>, CaError> {
        let key = KeyPair::generate().map_err(generate_err)?;
        let mut params = CertificateParams::default();
        let (san, cn) = match host {
            Host::Name(n) => (
                SanType::DnsName(n.as_str().try_into().map_err(generate_err)?),
                n.clone(),
            ),
            Host::Ip(ip) => (SanType::IpAddress(*ip), ip.to_string()),
        };
        params.subject_alt_names = vec![san];
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_DAYS);
        let leaf = params.signed_by(&key, &self.issuer).map_err(generate_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.cert_der.clone()], key_der)
            .map_err(|e| CaError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![HTTP11.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Certificates of a PEM file (`--egress-ca-file`): at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bytes = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::BadCerts {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::NoCerts {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The host's trusted roots (what `rustls-native-certs` finds: the system
/// bundle, or `SSL_CERT_FILE`/`SSL_CERT_DIR` of the daemon). Files it
/// could not read are skipped, with a warning.
pub fn host_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a host root certificate could not be read");
    }
    found.certs
}

/// The host-side TLS configuration: `roots` (the host's) plus `extra`
/// (the operator's CA file) verify the destination; ALPN `http/1.1`.
pub fn upstream_config(
    roots: &[CertificateDer<'static>],
    extra: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, CaError> {
    let mut store = RootCertStore::empty();
    // A host root rustls cannot use is skipped, as the TLS libraries of
    // the host would; the operator's certificates must all be usable.
    let (_, _ignored) = store.add_parsable_certificates(roots.iter().cloned());
    for c in extra {
        store
            .add(c.clone())
            .map_err(|e| CaError::Tls(format!("an --egress-ca-file certificate: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Tls(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![HTTP11.to_vec()];
    Ok(Arc::new(config))
}

fn pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}

/// The session's bundle (`/agentd/ca/bundle.pem`): the host's roots, the
/// daemon CA and the operator's CA file, so a client that trusts only its
/// `SSL_CERT_FILE` reaches intercepted and tunnelled hosts alike.
pub fn bundle(
    roots: &[CertificateDer<'static>],
    ca: &DaemonCa,
    extra: &[CertificateDer<'static>],
) -> String {
    let mut out = String::new();
    for c in roots.iter().chain([ca.cert_der()]).chain(extra) {
        out.push_str(&pem(c));
    }
    out
}

/// Write `bundle.pem` and `ca.pem` (the daemon CA alone, for
/// `NODE_EXTRA_CA_CERTS`) into `dir` (mounted at `/agentd/ca`), readable
/// by the session's user: they hold no secret.
pub fn write_session_files(
    dir: &Path,
    roots: &[CertificateDer<'static>],
    ca: &DaemonCa,
    extra: &[CertificateDer<'static>],
) -> Result<(), CaError> {
    for (name, text) in [
        ("bundle.pem", bundle(roots, ca, extra)),
        ("ca.pem", ca.cert_pem().to_string()),
    ] {
        let path = dir.join(name);
        crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|source| CaError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
