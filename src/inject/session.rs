//! One session's injected credentials as its proxy and its container use
//! them (issue 21): which `CONNECT` targets are intercepted and with which
//! credentials, every placeholder the session holds, and the variables the
//! session gets instead of the values.
//!
//! An interception is chosen by the target the agent asked for, compared
//! exactly with each credential's `inject.hosts`, never by the egress rule
//! that admitted it: with `*.example.com:443` and `api.example.com:443`
//! both listed, a `CONNECT api.example.com:443` is intercepted whichever
//! rule the policy found first.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::check::{self, Refusal};
use super::intercept::{Ctx, Job, Limits, Tls, intercept};
use super::io::Meter;
use super::{InjectError, Injection, Placeholder, SecretValue};
use crate::desired::{Credential, EgressHost, EgressRule};
use crate::egress::policy::{Host, Target};
use crate::egress::proxy::{Intercepted, Interception, Serving};

/// Where the session's CA files are mounted.
pub const CA_DIR: &str = "/agentd/ca";

/// The variables that point a session's TLS clients at `CA_DIR`: the
/// bundle (host roots, daemon CA, operator CA file) for most, the daemon
/// CA alone for Node, which adds it to its own roots.
pub fn ca_env() -> Vec<(String, String)> {
    let bundle = format!("{CA_DIR}/bundle.pem");
    let mut env: Vec<(String, String)> = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO"]
        .iter()
        .map(|k| ((*k).to_string(), bundle.clone()))
        .collect();
    env.push(("NODE_EXTRA_CA_CERTS".into(), format!("{CA_DIR}/ca.pem")));
    env
}

/// The target an `inject` host names (it was validated to be exactly an
/// `egress` entry, never a wildcard).
fn target_of(rule: &EgressRule) -> Option<Target> {
    let host = match &rule.host {
        EgressHost::Name(n) => Host::Name(n.clone()),
        EgressHost::Ip(ip) => Host::Ip(*ip),
        EgressHost::Wildcard(_) => return None,
    };
    Some(Target {
        host,
        port: rule.port,
    })
}

/// A session's interceptions.
#[derive(Debug, Default)]
pub struct SessionInjections {
    /// One job per intercepted target, with the credentials it carries.
    jobs: Vec<Arc<Job>>,
    all: Arc<[Placeholder]>,
}

impl SessionInjections {
    /// From the profile's credentials, the session's placeholders (by
    /// credential name) and each injected credential's value (`value`
    /// reads its source; its error names the credential, never the value).
    pub fn new(
        credentials: &[Credential],
        placeholders: &BTreeMap<String, Placeholder>,
        mut value: impl FnMut(&Credential) -> Result<SecretValue, String>,
    ) -> Result<SessionInjections, SessionError> {
        let mut by_target: Vec<(Target, Vec<Arc<Injection>>)> = Vec::new();
        let mut all = Vec::new();
        for c in credentials {
            let Some(inject) = &c.inject else { continue };
            let placeholder = placeholders
                .get(&c.name)
                .cloned()
                .ok_or_else(|| SessionError::NoPlaceholder(c.name.clone()))?;
            all.push(placeholder.clone());
            let injection = Arc::new(Injection::new(
                &c.name,
                placeholder,
                inject,
                value(c).map_err(SessionError::Source)?,
            )?);
            for rule in &inject.hosts {
                let Some(target) = target_of(rule) else {
                    continue;
                };
                match by_target.iter_mut().find(|(t, _)| *t == target) {
                    Some((_, own)) => own.push(Arc::clone(&injection)),
                    None => by_target.push((target, vec![Arc::clone(&injection)])),
                }
            }
        }
        let all: Arc<[Placeholder]> = all.into();
        let jobs = by_target
            .into_iter()
            .map(|(target, own)| {
                Arc::new(Job {
                    target,
                    own,
                    all: Arc::clone(&all),
                })
            })
            .collect();
        Ok(SessionInjections { jobs, all })
    }

    /// The interception for a `CONNECT` to `target`, if it is an inject
    /// host; `None`: a plain tunnel.
    pub fn job(&self, target: &Target) -> Option<Arc<Job>> {
        self.jobs.iter().find(|j| j.target == *target).cloned()
    }

    /// Every placeholder of the session (what plaintext is searched for).
    pub fn placeholders(&self) -> &[Placeholder] {
        &self.all
    }
}

/// A session's injected credentials as its egress proxy applies them: the
/// interceptions and the daemon's TLS material.
pub struct Injecting {
    pub sessions: SessionInjections,
    pub tls: Tls,
}

impl Interception for Injecting {
    fn intercepts(&self, target: &Target) -> bool {
        self.sessions.job(target).is_some()
    }

    fn check_plaintext(&self, head: &[u8], target: &Target) -> Result<(), String> {
        check::plaintext(
            head,
            &check::target_text(target),
            self.sessions.placeholders(),
        )
        .map_err(|r| r.reason())
    }

    fn serve<'a>(
        &'a self,
        client: &'a mut TcpStream,
        rest: Vec<u8>,
        upstream: TcpStream,
        target: &'a Target,
        how: Serving,
    ) -> Pin<Box<dyn Future<Output = Intercepted> + Send + 'a>> {
        Box::pin(async move {
            let Some(job) = self.sessions.job(target) else {
                return Intercepted {
                    bytes_out: 0,
                    bytes_in: 0,
                    denied: false,
                    reason: "closed: not an intercepted host".into(),
                };
            };
            let meter = Arc::new(Meter::default());
            let ctx = Ctx {
                tls: self.tls.clone(),
                limits: Limits {
                    idle: how.idle,
                    ..Limits::default()
                },
                cancel: how.cancel,
                meter: Arc::clone(&meter),
            };
            let summary = intercept(client, rest, upstream, job, ctx).await;
            let denied = summary.refused.as_ref().is_some_and(Refusal::is_denial);
            let reason = match (&summary.refused, &summary.failed) {
                (None, Some(why)) => format!("{} ({why})", summary.end),
                _ => summary.end,
            };
            Intercepted {
                bytes_out: meter.out.load(Ordering::Relaxed),
                bytes_in: meter.inn.load(Ordering::Relaxed),
                denied,
                reason,
            }
        })
    }
}

/// Why a session's injections cannot be set up; never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "credential `{0}` has no placeholder (hint: the session's placeholder file lost it; end the session)"
    )]
    NoPlaceholder(String),
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Value(#[from] InjectError),
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod proxy_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Inject, SecretSource};
    use crate::egress::policy::parse_authority;

    fn rule(text: &str) -> EgressRule {
        let t = parse_authority(text).expect("target");
        EgressRule {
            host: match t.host {
                Host::Name(n) => EgressHost::Name(n),
                Host::Ip(ip) => EgressHost::Ip(ip),
            },
            port: t.port,
            allow_private: false,
        }
    }

    fn cred(name: &str, hosts: &[&str]) -> Credential {
        Credential {
            name: name.into(),
            source: SecretSource::Env(name.into()),
            inject: (!hosts.is_empty()).then(|| Inject {
                hosts: hosts.iter().map(|h| rule(h)).collect(),
                header: "x-api-key".into(),
                prefix: String::new(),
                suffix: String::new(),
            }),
        }
    }

    #[test]
    fn a_connect_is_intercepted_only_for_an_exact_inject_host_issue_21() {
        let creds = [
            cred("A", &["api.a.example.com:443", "[::1]:8443"]),
            cred("B", &["api.b.example.com:443", "api.a.example.com:443"]),
            cred("PLAIN", &[]),
        ];
        let mut ph = BTreeMap::new();
        for n in ["A", "B"] {
            ph.insert(n.to_string(), Placeholder::generate().expect("random"));
        }
        let mut read = Vec::new();
        let s = SessionInjections::new(&creds, &ph, |c| {
            read.push(c.name.clone());
            Ok(SecretValue::new(format!("v-{}", c.name).into_bytes()))
        })
        .expect("set up");
        assert_eq!(read, ["A", "B"], "only injected values are read");
        let names = |t: &str| -> Vec<String> {
            s.job(&parse_authority(t).expect("t"))
                .map(|j| j.own.iter().map(|i| i.name.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(names("api.a.example.com:443"), ["A", "B"]);
        assert_eq!(names("api.b.example.com:443"), ["B"]);
        assert_eq!(names("[::1]:8443"), ["A"]);
        assert!(
            names("api.a.example.com:8443").is_empty(),
            "another port tunnels"
        );
        assert!(names("x.a.example.com:443").is_empty());
        assert_eq!(s.placeholders().len(), 2);
        let job = s
            .job(&parse_authority("api.b.example.com:443").expect("t"))
            .expect("job");
        assert_eq!(job.all.len(), 2, "every placeholder is searched for");
    }

    #[test]
    fn a_missing_placeholder_or_source_fails_without_the_value_issue_21() {
        let creds = [cred("A", &["api.a.example.com:443"])];
        let e = SessionInjections::new(&creds, &BTreeMap::new(), |_| {
            Ok(SecretValue::new(b"sk-secret".to_vec()))
        })
        .expect_err("no placeholder")
        .to_string();
        assert!(e.contains("credential `A` has no placeholder"), "{e}");
        let mut ph = BTreeMap::new();
        ph.insert("A".to_string(), Placeholder::generate().expect("random"));
        let e = SessionInjections::new(&creds, &ph, |_| {
            Ok(SecretValue::new(b"sk\nsecret".to_vec()))
        })
        .expect_err("not a header value")
        .to_string();
        assert!(e.contains("`A`") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn the_session_trusts_the_bundle_and_node_the_daemon_ca_issue_21() {
        let env: BTreeMap<String, String> = ca_env().into_iter().collect();
        assert_eq!(env["SSL_CERT_FILE"], "/agentd/ca/bundle.pem");
        assert_eq!(env["REQUESTS_CA_BUNDLE"], "/agentd/ca/bundle.pem");
        assert_eq!(env["GIT_SSL_CAINFO"], "/agentd/ca/bundle.pem");
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], "/agentd/ca/ca.pem");
    }
}
