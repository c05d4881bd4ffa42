//! Adoption after a restart: a start was interrupted with its container
//! in place. If the work folder was fully prepared, the session is sound:
//! open its gate and supervise it. If not, its command is still waiting at
//! the gate on a partial clone: remove the container; the start is retried
//! (same session).

use std::sync::Arc;

use super::workdir::WorkDir;
use super::{Shared, lock};
use crate::observed::Phase;
use crate::runtime::RuntimeError;

/// What kept an adoption from ending; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("cannot remove the unprepared container: {0}")]
    Remove(RuntimeError),
    #[error("cannot open the start gate: {0}")]
    Gate(std::io::Error),
    #[error("egress: cannot put the session's proxy back")]
    Egress,
}

/// How an adoption ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// The session runs and is supervised.
    Running,
    /// The unprepared start's container is gone; the start runs again.
    Restarted,
    /// No status record: nothing to adopt.
    Nothing,
}

/// Adopt `request`'s interrupted start; a failure is retried later.
pub async fn adopt(sh: &Arc<Shared>, request: &str) -> Option<Adopted> {
    match try_adopt(sh, request).await {
        Ok(a) => Some(a),
        Err(e) => {
            sh.retry_later(request, &e.to_string());
            None
        }
    }
}

async fn try_adopt(sh: &Arc<Shared>, request: &str) -> Result<Adopted, AdoptError> {
    let Some(status) = lock(&sh.store).get(request).cloned() else {
        return Ok(Adopted::Nothing);
    };
    let container = lock(&sh.containers)
        .by_request
        .get(request)
        .map(|c| c.name.clone());
    let prepared = status
        .session_id
        .as_deref()
        .is_some_and(|sid| WorkDir::is_prepared(&sh.settings.work_dir(sid)));
    if !prepared {
        tracing::info!(
            request,
            "interrupted start never finished preparing; restarting it"
        );
        let name = container.unwrap_or_else(|| sh.settings.container_name(request));
        sh.runtime.remove(&name).await.map_err(AdoptError::Remove)?;
        sh.container_gone(&name, None);
        lock(&sh.containers).by_request.remove(request);
        return Ok(Adopted::Restarted);
    }
    // Its egress proxy first: the gate may not have opened yet.
    if let (Some(sid), Some(dir)) = (&status.session_id, &status.audit_dir)
        && !super::session_egress::adopt(sh, request, &status.profile, sid, dir).await
    {
        return Err(AdoptError::Egress);
    }
    if let Some(sid) = &status.session_id {
        match sh.open_gate(request, sid).await {
            Ok(()) => {}
            // Only a session of an older agentd (whose gate its agent could
            // write) has a full gate: its command is past the gate already.
            // Supervise it like any running session (deadline, cancel)
            // rather than retry a write that can never succeed.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tracing::warn!(request, error = %e, "cannot send go; adopting the session as running");
            }
            Err(e) => return Err(AdoptError::Gate(e)),
        }
    }
    tracing::info!(request, "adopting running session");
    sh.update_status(request, |s| {
        s.phase = Phase::Running;
        s.container = container;
        s.started_at = s.started_at.or(Some(jiff::Timestamp::now()));
    });
    Ok(Adopted::Running)
}
