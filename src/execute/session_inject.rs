//! Sessions with injected credentials (issue 21): the glue between a
//! session's life and the interception its egress proxy does.
//!
//! Before the container runs: the session's placeholders are drawn and
//! kept 0600 in its work folder (`placeholders`, never mounted), the
//! credentials file exports them instead of the values, and the CA files
//! its TLS clients trust are written to `<work>/ca` (mounted read-only at
//! `/agentd/ca`, pointed at by `SSL_CERT_FILE` and the like). The injected
//! credentials are kept in the proxy's `egress.json` (names and sources,
//! never values).
//!
//! When the proxy is served (at the start, and again after a restart),
//! each value is read from its source into memory, and the placeholders
//! are read back from the work folder: a restarted daemon recognises the
//! placeholders the session already holds. Both go when the work folder
//! is removed at the session's end.
//!
//! The daemon's TLS material (its CA in `<state>/ca`, the host's roots,
//! `--egress-ca-file`, the verifying client) is made once, at the first
//! session that needs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;

use crate::desired::Credential;
use crate::inject::SecretValue;
use crate::inject::ca::{self, CaError, DaemonCa};
use crate::inject::intercept::Tls;
use crate::inject::placeholder::{self, Placeholder};
use crate::inject::session::Injecting;
use crate::inject::session::{SessionInjections, ca_env};

/// The session's placeholders, in its work folder.
const PLACEHOLDERS_FILE: &str = "placeholders";
/// The CA files the session trusts, in its work folder.
const CA_FOLDER: &str = "ca";

/// The daemon's TLS material for interceptions.
pub struct DaemonTls {
    tls: Tls,
    roots: Vec<CertificateDer<'static>>,
    extra: Vec<CertificateDer<'static>>,
}

/// [`DaemonTls`], made at first use from the state dir's `ca/` and the
/// operator's CA file. A failure is not kept: the next session tries again.
#[derive(Default)]
pub struct TlsCell {
    ca_dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    made: Mutex<Option<Arc<DaemonTls>>>,
}

/// Why a session's injected credentials cannot be set up; never holds a
/// value.
#[derive(Debug, thiserror::Error)]
pub enum InjectSetupError {
    #[error("inject: this daemon has no state dir for its CA")]
    NoCaDir,
    #[error("inject: {0}")]
    Ca(#[from] CaError),
    #[error("inject: {0}")]
    Placeholders(#[from] placeholder::PlaceholderError),
    #[error("inject: {0}")]
    Session(#[from] crate::inject::session::SessionError),
    #[error("inject: cannot make `{path}`: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TlsCell {
    /// The CA is kept in `ca_dir`; `ca_file` is `--egress-ca-file`.
    pub fn new(ca_dir: PathBuf, ca_file: Option<PathBuf>) -> TlsCell {
        TlsCell {
            ca_dir: Some(ca_dir),
            ca_file,
            made: Mutex::default(),
        }
    }

    /// The material, made now if it is not yet.
    pub fn get(&self) -> Result<Arc<DaemonTls>, InjectSetupError> {
        let mut made = super::lock(&self.made);
        if let Some(t) = &*made {
            return Ok(Arc::clone(t));
        }
        let dir = self.ca_dir.as_ref().ok_or(InjectSetupError::NoCaDir)?;
        let ca = Arc::new(DaemonCa::load_or_create(dir)?);
        let roots = ca::host_roots();
        let extra = match &self.ca_file {
            Some(f) => ca::read_ca_file(f)?,
            None => Vec::new(),
        };
        let upstream = ca::upstream_config(&roots, &extra)?;
        let t = Arc::new(DaemonTls {
            tls: Tls { ca, upstream },
            roots,
            extra,
        });
        *made = Some(Arc::clone(&t));
        Ok(t)
    }
}

/// The injected credentials of a profile.
pub fn injected(credentials: &[Credential]) -> Vec<Credential> {
    credentials
        .iter()
        .filter(|c| c.inject.is_some())
        .cloned()
        .collect()
}

/// What a session with injected credentials is given before it runs.
pub struct Prepared {
    /// By credential name: what the credentials file exports.
    pub placeholders: BTreeMap<String, Placeholder>,
    /// `<work>/ca`, to mount read-only at `inject::session::CA_DIR`.
    pub ca_dir: PathBuf,
    /// The variables pointing its TLS clients at the CA files.
    pub env: Vec<(String, String)>,
}

/// Before the container runs: the placeholders (kept, so a restarted
/// daemon finds them) and the CA files. `None` when nothing is injected.
pub fn prepare(
    tls: &TlsCell,
    work_root: &Path,
    credentials: &[Credential],
) -> Result<Option<Prepared>, InjectSetupError> {
    let names: Vec<&str> = credentials
        .iter()
        .filter(|c| c.inject.is_some())
        .map(|c| c.name.as_str())
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let daemon = tls.get()?;
    let placeholders = placeholder::load_or_create(&work_root.join(PLACEHOLDERS_FILE), &names)?;
    let ca_dir = work_root.join(CA_FOLDER);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&ca_dir)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(|source| InjectSetupError::Folder {
                path: ca_dir.clone(),
                source,
            })?;
    }
    ca::write_session_files(&ca_dir, &daemon.roots, &daemon.tls.ca, &daemon.extra)?;
    Ok(Some(Prepared {
        placeholders,
        ca_dir,
        env: ca_env(),
    }))
}

/// When the proxy is served: the session's interceptions, with each value
/// read from its source now (`read` is `secrets::read` with the daemon's
/// environment). `None` when nothing is injected.
pub fn injecting(
    tls: &TlsCell,
    work_root: &Path,
    credentials: &[Credential],
    read: impl Fn(&Credential) -> Result<String, String>,
) -> Result<Option<Arc<Injecting>>, InjectSetupError> {
    if credentials.iter().all(|c| c.inject.is_none()) {
        return Ok(None);
    }
    let daemon = tls.get()?;
    let placeholders = placeholder::read(&work_root.join(PLACEHOLDERS_FILE))?;
    let sessions = SessionInjections::new(credentials, &placeholders, |c| {
        read(c).map(|v| SecretValue::new(v.into_bytes()))
    })?;
    Ok(Some(Arc::new(Injecting {
        sessions,
        tls: daemon.tls.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{EgressHost, EgressRule, Inject, SecretSource};

    fn cred(name: &str, inject: bool) -> Credential {
        Credential {
            name: name.into(),
            source: SecretSource::Env(format!("HOST_{name}")),
            inject: inject.then(|| Inject {
                hosts: vec![EgressRule {
                    host: EgressHost::Name("api.example.com".into()),
                    port: 443,
                    allow_private: false,
                }],
                header: "x-api-key".into(),
                prefix: String::new(),
                suffix: String::new(),
            }),
        }
    }

    #[test]
    fn a_session_keeps_its_placeholders_and_gets_ca_files_without_the_key_issue_21() {
        let d = tempfile::tempdir().expect("tmp");
        let work = d.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        let tls = TlsCell::new(d.path().join("state-ca"), None);
        let creds = [cred("A", true), cred("PLAIN", false)];
        assert!(
            prepare(&tls, &work, &[cred("PLAIN", false)])
                .expect("ok")
                .is_none()
        );
        let p = prepare(&tls, &work, &creds)
            .expect("prepare")
            .expect("some");
        assert_eq!(p.placeholders.keys().collect::<Vec<_>>(), ["A"]);
        let again = prepare(&tls, &work, &creds).expect("again").expect("some");
        assert_eq!(
            again.placeholders, p.placeholders,
            "stable across a restart"
        );
        let bundle = std::fs::read_to_string(p.ca_dir.join("bundle.pem")).expect("bundle");
        let ca = std::fs::read_to_string(p.ca_dir.join("ca.pem")).expect("ca");
        let squeeze = |s: &str| s.split_whitespace().collect::<String>();
        assert!(
            squeeze(&bundle).contains(&squeeze(&ca)),
            "the bundle holds the daemon CA"
        );
        for f in ["bundle.pem", "ca.pem"] {
            let text = std::fs::read_to_string(p.ca_dir.join(f)).expect("read");
            assert!(!text.contains("PRIVATE KEY"), "{f}");
        }
        let value = "sk-never-in-a-file";
        let inj = injecting(&tls, &work, &creds, |c| {
            assert_eq!(c.name, "A", "only injected values are read");
            Ok(value.to_string())
        })
        .expect("injecting")
        .expect("some");
        assert_eq!(inj.sessions.placeholders().len(), 1);
        assert_eq!(
            inj.sessions.placeholders()[0].as_str(),
            p.placeholders["A"].as_str()
        );
        for entry in walkdir::WalkDir::new(&work) {
            let entry = entry.expect("walk");
            if entry.file_type().is_file() {
                let bytes = std::fs::read(entry.path()).expect("read");
                assert!(
                    !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                    "{}",
                    entry.path().display()
                );
            }
        }
        let e = injecting(&tls, &work, &creds, |_| Err("credential `A`: unset".into()))
            .err()
            .expect("source error")
            .to_string();
        assert!(e.contains("credential `A`: unset"), "{e}");
    }
}
