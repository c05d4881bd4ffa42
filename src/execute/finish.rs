//! Ending a session: stop it (cancel, timeout), or collect what it left when
//! its container exited; finalize the audit record; remove the container
//! and the work folder; record `done`.
//!
//! Order matters for crash safety: the audit record is completed before the
//! container is removed, so a crash in between leaves a container the next
//! pass finishes again (idempotently), never a lost exit code.

use std::sync::Arc;

use super::{Shared, lock, stop_message};
use crate::audit::Record;
use crate::observed::{ContainerState, Outcome, Phase};
use crate::plan::StopReason;

/// `podman stop` with the grace period; the exit is then collected by `finish`.
pub async fn stop(sh: &Arc<Shared>, request: &str, reason: StopReason) {
    let name = sh.settings.container_name(request);
    let msg = stop_message(reason);
    tracing::info!(request, container = %name, reason = ?reason, "stopping session");
    sh.update_status(request, |s| s.message = Some(msg));
    if let Err(e) = sh.podman.stop(&name, sh.settings.stop_grace).await {
        tracing::warn!(request, error = %e, "podman stop failed; will retry");
        sh.update_status(request, |s| {
            s.message = Some(format!("stopping failed, will retry: {e}"))
        });
        return;
    }
    // The exit is also reported by the events stream; mark it now so the
    // next pass finishes without waiting for it.
    if let Ok(Some(i)) = sh.podman.inspect(&name).await
        && let Some(c) = lock(&sh.containers).by_request.get_mut(request)
    {
        c.state = i.state;
    }
}

/// A start that failed before or at `podman run`: clean up what exists and
/// end the request as `start_failed` with `message`.
pub async fn fail_start(sh: &Arc<Shared>, request: &str, session_id: Option<&str>, message: &str) {
    tracing::warn!(
        request,
        session = session_id.unwrap_or(""),
        message,
        "session start failed"
    );
    let name = sh.settings.container_name(request);
    if let Err(e) = sh.podman.rm(&name).await {
        tracing::warn!(request, error = %e, "cannot remove half-created container");
    }
    lock(&sh.containers).by_request.remove(request);
    let now = jiff::Timestamp::now();
    if let Some(sid) = session_id {
        let _ = std::fs::remove_dir_all(sh.settings.work_dir(sid));
        let audit_dir = lock(&sh.store)
            .get(request)
            .and_then(|s| s.audit_dir.clone());
        if let Some(dir) = audit_dir {
            let record = Record { dir };
            if let Err(e) = record.reclaim_session_dir() {
                tracing::warn!(request, error = %e, "cannot reclaim audit session folder");
            }
            if let Some(mut rec) = record.read_session() {
                rec.end_timestamp = Some(now);
                rec.outcome = Some(Outcome::StartFailed);
                rec.message = Some(message.to_string());
                if let Err(e) = record.write_session(&rec) {
                    tracing::error!(request, error = %e, "cannot finalize audit record");
                }
            }
        }
    }
    sh.update_status(request, |s| {
        s.phase = Phase::Done;
        s.outcome = Some(Outcome::StartFailed);
        s.exit_code = None;
        s.finished_at = Some(now);
        s.message = Some(message.to_string());
    });
}

/// Collect the exit of a session whose container exited (or that never got
/// one), finalize its record, remove its resources and mark it done.
pub async fn finish(sh: &Arc<Shared>, request: &str, cancelled: bool) {
    let Some(status) = sh.update_status(request, |s| s.phase = Phase::Finishing) else {
        return;
    };
    let name = status
        .container
        .clone()
        .unwrap_or_else(|| sh.settings.container_name(request));
    let deadline = lock(&sh.containers)
        .by_request
        .get(request)
        .and_then(|c| c.deadline);
    let now = jiff::Timestamp::now();

    let inspected = match sh.podman.inspect(&name).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(request, error = %e, "cannot inspect container; will retry");
            sh.update_status(request, |s| {
                s.message = Some(format!("finishing: {e}; will retry"))
            });
            return;
        }
    };
    if let Some(i) = &inspected
        && !matches!(i.state, ContainerState::Exited(_) | ContainerState::Created)
    {
        // Still running (a cancel raced with it): stop first.
        if let Err(e) = sh.podman.stop(&name, sh.settings.stop_grace).await {
            tracing::warn!(request, error = %e, "cannot stop container; will retry");
            return;
        }
        return Box::pin(finish(sh, request, cancelled)).await;
    }

    let ran = inspected.as_ref().is_some_and(|i| i.started_at.is_some());
    let exit_code = inspected.as_ref().filter(|_| ran).map(|i| i.exit_code);
    let finished_at = inspected
        .as_ref()
        .and_then(|i| i.finished_at)
        .unwrap_or(now);
    let (outcome, message) = if cancelled {
        (
            Outcome::Cancelled,
            Some("cancelled: the request file was removed".to_string()),
        )
    } else if let (Some(d), true) = (deadline, ran) {
        if finished_at.as_second() >= d {
            (Outcome::TimedOut, Some("timed out".to_string()))
        } else {
            (Outcome::from_exit_code(exit_code.unwrap_or(-1)), None)
        }
    } else if let Some(code) = exit_code {
        (
            Outcome::from_exit_code(code),
            inspected
                .as_ref()
                .filter(|i| i.oom_killed)
                .map(|_| "killed: out of memory".to_string()),
        )
    } else if status.session_id.is_none() {
        (
            Outcome::Cancelled,
            Some("cancelled before it started".to_string()),
        )
    } else {
        (
            Outcome::GenericFailure,
            Some("the container disappeared before its exit code was collected".to_string()),
        )
    };

    let mut message = message;
    if let (Some(sid), Some(dir)) = (&status.session_id, &status.audit_dir) {
        let record = Record { dir: dir.clone() };
        let work = sh.settings.work_dir(sid);
        match crate::audit::k8s_to_raw(
            &work.join("console.k8s.log"),
            &record.console_path(),
            sh.settings.audit_max_bytes,
        ) {
            Ok((_, true)) => {
                message = Some(format!(
                    "console output truncated at {} bytes",
                    sh.settings.audit_max_bytes
                ))
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(request, error = %e, "cannot write console log; will retry");
                sh.update_status(request, |s| {
                    s.message = Some(format!(
                        "finishing: cannot write console log: {e}; will retry"
                    ))
                });
                return;
            }
        }
        if let Err(e) = record.reclaim_session_dir() {
            tracing::error!(request, error = %e, "cannot reclaim audit session folder; will retry");
            sh.update_status(request, |s| {
                s.message = Some(format!("finishing: {e}; will retry"))
            });
            return;
        }
        if let Some(mut rec) = record.read_session() {
            rec.end_timestamp = Some(now);
            rec.outcome = Some(outcome);
            rec.exit_code = exit_code;
            rec.image_id = inspected.as_ref().map(|i| i.image_id.clone());
            rec.image_digest = inspected.as_ref().and_then(|i| i.image_digest.clone());
            rec.message = message.clone();
            if let Err(e) = record.write_session(&rec) {
                tracing::error!(request, error = %e, "cannot finalize audit record; will retry");
                sh.update_status(request, |s| {
                    s.message = Some(format!("finishing: {e}; will retry"))
                });
                return;
            }
        }
        if let Err(e) = sh.podman.rm(&name).await {
            tracing::warn!(request, error = %e, "cannot remove container; will retry");
            return;
        }
        let _ = std::fs::remove_dir_all(&work);
    } else if inspected.is_some()
        && let Err(e) = sh.podman.rm(&name).await
    {
        tracing::warn!(request, error = %e, "cannot remove container; will retry");
        return;
    }
    lock(&sh.containers).by_request.remove(request);
    sh.update_status(request, |s| {
        s.phase = Phase::Done;
        s.outcome = Some(outcome);
        s.exit_code = exit_code;
        s.finished_at = Some(now);
        s.message = message;
    });
    tracing::info!(
        request,
        session = status.session_id.as_deref().unwrap_or(""),
        outcome = outcome.as_str(),
        exit_code,
        "session done"
    );
}
