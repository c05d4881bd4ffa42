//! Starting a session: allocate its id and audit record, prepare the work
//! folder (`prepare.rs`), then run the container beside the clone, and
//! open the gate. One failure path: `try_start` returns a `StartError`, and
//! `start` turns its kind into `start_failed` or a retry.

use std::sync::Arc;

use super::prepare::prepare;
use super::workdir::WorkDir;
use super::{Shared, lock};
use crate::audit::{Record, SessionRecord};
use crate::desired::{Profile, Request, SecretSource};
use crate::fault;
use crate::observed::{Container, ContainerState, Phase};
use crate::runtime::{ErrorKind, RuntimeError};

/// Starts that fail transiently (Podman hung or missing) are retried this
/// many times before the request ends as `start_failed`.
const MAX_START_ATTEMPTS: u32 = 5;

/// 16 lowercase hex characters from the kernel's random source.
pub fn new_session_id() -> String {
    crate::fsutil::random_hex()
}

/// Why a start did not leave its session running. The kind decides what
/// comes next ([`StartError::next`]); the message is the status message.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the frozen spec of {request}: {reason}")]
    Spec { request: String, reason: String },
    /// The audit record could not be made or written.
    #[error(transparent)]
    Record(#[from] crate::audit::AuditError),
    /// The profile, the request or the host refuses the session (a limit
    /// not enforced, a mount, a secret, the clone); the message names the
    /// field and the fix.
    #[error("{0}")]
    Refused(String),
    #[error("image `{image}` is not available locally (agentd never pulls): {source}")]
    ImageMissing { image: String, source: RuntimeError },
    #[error(
        "network: the default network of rootless Podman could not start: {cause}; hint: set `network = \"none\"` in profile {profile} if its sessions need no network, make /dev/net/tun usable for the daemon's user, or run agentd rootful; podman said: {source}"
    )]
    HostNetwork {
        cause: &'static str,
        profile: String,
        source: RuntimeError,
    },
    #[error(transparent)]
    Credentials(#[from] super::workdir::CredentialsError),
    #[error(transparent)]
    Secret(#[from] super::secrets::SecretError),
    #[error("cannot create work folder: {0}")]
    WorkFolder(std::io::Error),
    #[error("cannot create the start gate: {0}")]
    MakeGate(std::io::Error),
    #[error("cannot write input files: {0}")]
    Input(std::io::Error),
    #[error(transparent)]
    Clone(#[from] super::clone::CloneError),
    #[error(transparent)]
    ResultsBase(#[from] super::results::BaseError),
    #[error("cannot hand the home folder to the session user: {0}")]
    GiveHome(std::io::Error),
    #[error("cannot mark the work folder prepared: {0}")]
    MarkPrepared(std::io::Error),
    #[error(transparent)]
    Private(#[from] super::private_repo::PrivateRepoError),
    #[error("podman run failed: {0}")]
    Run(RuntimeError),
    #[error("cannot open the start gate: {0}")]
    Gate(std::io::Error),
    /// The session's egress proxy could not be placed or served.
    #[error("egress: cannot start the session's proxy: {0}")]
    Egress(#[from] super::session_egress::EgressError),
    /// The runtime did not answer (or the name was taken) and no container
    /// turned up: another attempt, at most `MAX_START_ATTEMPTS`.
    #[error("podman run: {0}")]
    RunTransient(RuntimeError),
    /// An earlier attempt's container could not be looked for.
    #[error("checking for an earlier attempt's container: {0}")]
    Probe(RuntimeError),
}

/// What a failed start leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// `start_failed`, with the error as its message.
    Fail,
    /// Another attempt after the backoff, however many it takes.
    Retry,
    /// Another attempt, until `MAX_START_ATTEMPTS` have failed.
    RetryAtMost(u32),
}

impl StartError {
    /// PURE: what comes after this failure.
    pub fn next(&self) -> Next {
        match self {
            StartError::Probe(_) => Next::Retry,
            StartError::RunTransient(_) => Next::RetryAtMost(MAX_START_ATTEMPTS),
            _ => Next::Fail,
        }
    }

    /// PURE: a failed run of the container, classified. `None`: it may
    /// have gone through (timed out, a name taken by an earlier attempt):
    /// look before deciding.
    pub fn of_run(e: RuntimeError, profile: &Profile) -> Result<StartError, RuntimeError> {
        Ok(match e.kind() {
            ErrorKind::ImageMissing => StartError::ImageMissing {
                image: profile.base_image.clone(),
                source: e,
            },
            ErrorKind::HostNetwork(cause) => StartError::HostNetwork {
                cause,
                profile: profile.name.clone(),
                source: e,
            },
            ErrorKind::Failed => StartError::Run(e),
            ErrorKind::Transient | ErrorKind::NameInUse => return Err(e),
        })
    }
}

/// How a start that raised no error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// The command passed its gate: the session runs.
    Running,
    /// A container of an earlier attempt (or of this one's timed-out run)
    /// exists: the planner takes it from here.
    HandedOver,
}

/// Start `request`'s session. The one place a failed start becomes a retry
/// or `start_failed` (issue 18).
pub async fn start(sh: &Arc<Shared>, request: &str, profile: Profile) {
    // Set once the session's record exists: a failure after it seals the
    // record and removes the work folder.
    let mut session = None;
    let e = match try_start(sh, request, profile, &mut session).await {
        Ok(_) => return,
        Err(e) => e,
    };
    let session = session.as_deref();
    match e.next() {
        Next::Fail => super::finish::fail_start(sh, request, session, &e.to_string()).await,
        Next::Retry => {
            sh.retry_later(request, &e.to_string());
        }
        Next::RetryAtMost(max) => {
            if sh.retry_later(request, &e.to_string()) >= max {
                let why = match &e {
                    StartError::RunTransient(source) => source.to_string(),
                    other => other.to_string(),
                };
                let msg = format!("podman run failed {max} times: {why}");
                super::finish::fail_start(sh, request, session, &msg).await;
            }
        }
    }
}

async fn try_start(
    sh: &Arc<Shared>,
    request: &str,
    profile: Profile,
    session: &mut Option<String>,
) -> Result<Started, StartError> {
    let st = &sh.settings;
    let spec: Request = std::fs::read(st.spec_path(request))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|reason| StartError::Spec {
            request: request.to_string(),
            reason,
        })?;
    // A retried start (after a crash or a transient failure) keeps its
    // session id, so the request keeps one audit record. But first: an
    // earlier attempt may have got further than it knew (the run timed
    // out, the daemon died right after it). If its container exists, hand
    // it to the planner (adopt, finish or clean up) and touch nothing
    // else: its work folder may be in use.
    let prior = lock(&sh.store)
        .get(request)
        .and_then(|s| s.session_id.clone());
    if prior.is_some() {
        let found = sh
            .runtime
            .inspect(&st.container_name(request))
            .await
            .map_err(StartError::Probe)?;
        if let Some(i) = found {
            sh.remember(request, prior.as_deref(), &i);
            // Persist the `starting` that `apply` set in memory only.
            sh.update_status(request, |_| {});
            return Ok(Started::HandedOver);
        }
        // No container, but its folder was prepared and its gate opened:
        // the command may have run in a container that removed itself once
        // it exited (issue 18). Its end is finishing's to record, never a
        // second run.
        let may_have_run = |sid: &str| {
            let work = st.work_dir(sid);
            WorkDir::is_prepared(&work) && WorkDir::gate_opened(&work)
        };
        if prior.as_deref().is_some_and(may_have_run) {
            tracing::info!(
                request,
                "the container of an earlier attempt ran and is gone; finishing it"
            );
            sh.update_status(request, |s| s.phase = Phase::Finishing);
            return Ok(Started::HandedOver);
        }
    }
    let session_id = prior.unwrap_or_else(new_session_id);
    // The status names the record before the record exists, so a crash
    // in between leaves nothing unreferenced (a retry reuses both).
    let start_ts = jiff::Timestamp::now();
    sh.update_status(request, |s| {
        s.phase = Phase::Starting;
        s.session_id = Some(session_id.clone());
        s.audit_dir = Some(Record::path_for(&st.audit_root, &profile.name, &session_id));
        s.message = None;
    });
    let record = Record::create(
        &st.audit_root,
        &profile.name,
        &session_id,
        st.host_session_uid(),
    )?;
    *session = Some(session_id.clone());
    let repo = spec.repo.clone().or(profile.repo.clone());
    tracing::info!(request, session = %session_id, profile = %profile.name, "session starting");
    let work_unit = match &spec.input {
        crate::desired::Input::WorkUnit(w) => Some(w.clone()),
        _ => None,
    };
    let session_rec = SessionRecord {
        schema_version: crate::audit::SCHEMA_VERSION,
        session_id: session_id.clone(),
        profile: profile.name.clone(),
        request: request.to_string(),
        spec_sha256: spec.spec_sha256.clone(),
        repo: repo.as_ref().map(|r| r.as_str()).unwrap_or_default(),
        work_unit: work_unit.clone(),
        start_timestamp: start_ts,
        end_timestamp: None,
        outcome: None,
        exit_code: None,
        image: profile.base_image.clone(),
        image_id: None,
        image_digest: None,
        message: None,
        cut: None,
        changes: None,
        push: None,
    };
    record.write_session(&session_rec)?;
    check_runtime_secrets(sh, &profile).await?;
    let (run_spec, clone_job) = prepare(sh, &session_id, &profile, &spec, repo.as_ref(), &record)?;
    let deadline = Some(run_spec.identity.deadline);
    // The container is created while the repository is cloned; its command
    // waits at the gate until both are done.
    let (run, prepared) = tokio::join!(sh.runtime.run(&run_spec), clone_job.run(sh));
    let running = match run {
        Ok(running) => running,
        Err(e) => {
            let e = match StartError::of_run(e, &profile) {
                Ok(fatal) => return Err(fatal),
                Err(transient) => transient,
            };
            // The container may exist anyway (a timed-out run that went
            // through, a name taken by an earlier attempt): look before
            // deciding.
            if let Ok(Some(i)) = sh.runtime.inspect(&run_spec.name).await {
                sh.remember(request, Some(&session_id), &i);
                if i.state == ContainerState::Running {
                    mark_running(sh, request, &run_spec.name);
                }
                return Ok(Started::HandedOver);
            }
            return Err(StartError::RunTransient(e));
        }
    };
    prepared?;
    fault::point("start-after-run");
    // A fast command may have died (and its exit been recorded) before we
    // get here: never overwrite what is known.
    lock(&sh.containers)
        .by_request
        .entry(request.to_string())
        .or_insert(Container {
            id: running.id,
            name: run_spec.name.clone(),
            request: Some(request.to_string()),
            session_id: Some(session_id.clone()),
            state: ContainerState::Running,
            deadline,
            started: true,
        });
    if profile.egress.is_some() {
        super::session_egress::start(
            sh,
            request,
            &profile.name,
            &session_id,
            &record.dir,
            running.namespaces,
        )
        .await?;
    }
    sh.open_gate(request, &session_id)
        .await
        .map_err(StartError::Gate)?;
    mark_running(sh, request, &run_spec.name);
    tracing::info!(request, session = %session_id, container = %run_spec.name, "session running");
    Ok(Started::Running)
}

/// Every Podman secret the profile's credentials name must exist before
/// the container is made: a missing one is `start_failed` naming the
/// credential and the secret. The runtime not answering is left to the run
/// (and its retries).
async fn check_runtime_secrets(sh: &Shared, profile: &Profile) -> Result<(), StartError> {
    for c in &profile.credentials {
        let SecretSource::PodmanSecret(secret) = &c.source else {
            continue;
        };
        match sh.runtime.secret_exists(secret).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(StartError::Refused(format!(
                    "credential `{}`: podman secret `{secret}` does not exist; hint: create it with `podman secret create {secret} FILE` as the user agentd runs as",
                    c.name
                )));
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(secret = %secret, error = %e, "cannot check a podman secret; podman run will tell");
            }
            Err(e) => {
                return Err(StartError::Refused(format!(
                    "credential `{}`: cannot check podman secret `{secret}`: {e}",
                    c.name
                )));
            }
        }
    }
    Ok(())
}

/// Record that the session's container runs.
fn mark_running(sh: &Shared, request: &str, name: &str) {
    sh.succeeded(request);
    sh.update_status(request, |s| {
        s.phase = Phase::Running;
        s.container = Some(name.to_string());
        s.started_at = s.started_at.or(Some(jiff::Timestamp::now()));
        s.message = None;
    });
}
