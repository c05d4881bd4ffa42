//! Ending a session: stop it (cancel, timeout), or collect what it left when
//! its container exited; finalize the audit record; remove the container
//! and the work folder; record `done`.
//!
//! Order matters for crash safety: the audit record is completed before the
//! status says `done`, so a crash in between leaves a session the next pass
//! finishes again (idempotently), never a lost exit code. Every failure is
//! a [`FinishError`], retried with backoff (`Shared::retry_later`) from one
//! place per verb. What the session's outcome is, and what to do with a
//! container found in one state or another, are pure: [`decide`], [`step`].
//!
//! The critical path from the exit to `done` holds only what the record
//! needs (issue 12 item 3): `Runtime::inspect` answers from what the
//! runtime already knows when that is certain (Podman: `podman/known.rs`)
//! and asks only otherwise. The work folder and an exited container are
//! removed after `done` is written: a crash in between leaves a stale work
//! folder (the sweep removes it) or a container of a done request (the
//! planner removes it on a later pass).

use std::path::PathBuf;
use std::sync::Arc;

pub use super::outcome::{Step, Verdict, decide, step};
use super::{Shared, lock, stop_message};
use crate::audit::{Limits, Record, SealOptions, Sealed};
use crate::fault;
use crate::observed::{ContainerState, Outcome, Phase, StopReason};
use crate::runtime::RuntimeError;

/// A step of ending a session failed; the operation is retried with
/// backoff, and the message is the status message meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("stopping failed: {0}")]
    Stop(RuntimeError),
    #[error("finishing: {0}")]
    Inspect(RuntimeError),
    #[error("finishing: cannot stop container: {0}")]
    StopAgain(RuntimeError),
    #[error("cannot remove the unprepared container: {0}")]
    RemoveUnprepared(RuntimeError),
    #[error("cannot remove half-created container: {0}")]
    RemoveHalfCreated(RuntimeError),
    #[error("finishing: cannot remove container: {0}")]
    Remove(RuntimeError),
    #[error("finishing: cannot write console log: {0}")]
    Console(RuntimeError),
    #[error("finishing: cannot reopen a record a crash left half-sealed: {0}")]
    Reopen(crate::audit::AuditError),
    #[error("finishing: cannot read {}/agentd/session.json", .0.display())]
    ReadRecord(PathBuf),
    #[error("finishing: sealing the audit record: {0}")]
    Seal(String),
}

/// `podman stop` with the grace period; the exit is then collected by `finish`.
pub async fn stop(sh: &Arc<Shared>, request: &str, reason: StopReason) {
    if let Err(e) = try_stop(sh, request, reason).await {
        sh.retry_later(request, &e.to_string());
    }
}

async fn try_stop(sh: &Arc<Shared>, request: &str, reason: StopReason) -> Result<(), FinishError> {
    let name = sh.settings.container_name(request);
    tracing::info!(request, container = %name, reason = ?reason, "stopping session");
    // Persist why before acting, so the outcome survives a crash mid-stop.
    sh.update_status(request, |s| {
        s.message = Some(stop_message(reason));
        s.stop_reason = Some(reason);
    });
    sh.runtime
        .stop(&name, sh.settings.stop_grace)
        .await
        .map_err(FinishError::Stop)?;
    sh.succeeded(request);
    // The exit is also reported by the runtime's changes; record it now so
    // the next pass finishes without waiting for that.
    if let Ok(Some(i)) = sh.runtime.inspect(&name).await
        && let Some(c) = lock(&sh.containers).by_request.get_mut(request)
    {
        c.state = i.state;
    }
    Ok(())
}

/// A start that failed before or at `podman run`: clean up what exists and
/// end the request as `start_failed` with `message`.
pub async fn fail_start(sh: &Arc<Shared>, request: &str, session_id: Option<&str>, message: &str) {
    if let Err(e) = try_fail_start(sh, request, session_id, message).await {
        sh.retry_later(request, &e.to_string());
    }
}

async fn try_fail_start(
    sh: &Arc<Shared>,
    request: &str,
    session_id: Option<&str>,
    message: &str,
) -> Result<(), FinishError> {
    tracing::warn!(
        request,
        session = session_id.unwrap_or(""),
        message,
        "session start failed"
    );
    sh.egress.stop(request).await;
    let name = sh.settings.container_name(request);
    sh.runtime
        .remove(&name)
        .await
        .map_err(FinishError::RemoveHalfCreated)?;
    sh.container_gone(&name, None);
    lock(&sh.containers).by_request.remove(request);
    sh.close_gate(request);
    let now = jiff::Timestamp::now();
    let mut message = Some(message.to_string());
    if let Some(sid) = session_id {
        remove_work_dir(sh, request, sid, &mut message).await;
        let audit_dir = lock(&sh.store)
            .get(request)
            .and_then(|s| s.audit_dir.clone());
        if let Some(dir) = audit_dir {
            let record = Record { dir };
            let start_message = message.clone();
            let note = seal_record(sh, request, &record, move |rec| {
                rec.end_timestamp = Some(now);
                rec.outcome = Some(Outcome::StartFailed);
                rec.message = start_message;
            })
            .await?;
            add_note(&mut message, note);
        }
    }
    sh.succeeded(request);
    sh.update_status(request, |s| {
        s.phase = Phase::Done;
        s.outcome = Some(Outcome::StartFailed);
        s.exit_code = None;
        s.finished_at = Some(now);
        s.message = message;
    });
    Ok(())
}

/// Collect the exit of a session whose container exited (or that never got
/// one), finalize its record, remove its resources and mark it done.
/// Idempotent: a re-run after a crash at any point reaches the same end.
pub async fn finish(sh: &Arc<Shared>, request: &str, cancelled: bool) {
    if let Err(e) = try_finish(sh, request, cancelled).await {
        sh.retry_later(request, &e.to_string());
    }
}

async fn try_finish(sh: &Arc<Shared>, request: &str, cancelled: bool) -> Result<(), FinishError> {
    // How long the end took up to `done` (logged): the critical path of
    // issue 12, seen in every deployment's log, not only in a benchmark.
    let began = std::time::Instant::now();
    let Some(status) = sh.update_status(request, |s| s.phase = Phase::Finishing) else {
        return Ok(());
    };
    let name = status
        .container
        .clone()
        .unwrap_or_else(|| sh.settings.container_name(request));
    let now = jiff::Timestamp::now();
    let record = status.audit_dir.clone().map(|dir| Record { dir });
    // A crash after the record was finalized: its outcome is the truth.
    let finalized = record
        .as_ref()
        .and_then(Record::read_session)
        .filter(|r| r.outcome.is_some());

    let mut inspected = sh
        .runtime
        .inspect(&name)
        .await
        .map_err(FinishError::Inspect)?;
    // Gone: a container that removed itself after its exit (issue 18
    // item 6) is judged from what the runtime recorded of that exit (a
    // daemon restarted since never saw it).
    if inspected.is_none()
        && finalized.is_none()
        && let Some(sid) = &status.session_id
    {
        inspected = sh
            .runtime
            .ended(&name, &sh.settings.work_dir(sid))
            .await
            .map_err(FinishError::Inspect)?;
    }
    let stopping = status.stop_reason.is_some() || cancelled;
    // The command passes its gate only after the work folder is marked
    // prepared, so a session whose folder never was cannot have run its
    // command: whatever ended its container (an adoption's clean-up that a
    // kill -9 interrupted, say) ended an unfinished start. Start it again
    // with the same session id rather than judge an exit that never was.
    let unprepared = finalized.is_none()
        && !stopping
        && status.session_id.as_deref().is_some_and(|sid| {
            let work = sh.settings.work_dir(sid);
            work.is_dir() && !super::workdir::WorkDir::is_prepared(&work)
        });
    let running = inspected
        .as_ref()
        .is_some_and(|i| i.state == ContainerState::Running);
    match step(running, stopping, unprepared) {
        Step::Resume => {
            // The container table was stale: the session runs. Put it back
            // and let the planner supervise it; never stop healthy work.
            tracing::info!(request, "container still running; resuming supervision");
            if let Some(i) = &inspected {
                sh.remember(request, status.session_id.as_deref(), i);
            }
            sh.update_status(request, |s| s.phase = Phase::Running);
            return Ok(());
        }
        Step::StopAgain => {
            return sh
                .runtime
                .stop(&name, sh.settings.stop_grace)
                .await
                .map_err(FinishError::StopAgain);
        }
        Step::StartAgain => {
            sh.egress.stop(request).await;
            if inspected.as_ref().is_some_and(|i| !removed_by_runtime(i)) {
                sh.runtime
                    .remove(&name)
                    .await
                    .map_err(FinishError::RemoveUnprepared)?;
            }
            sh.container_gone(&name, inspected.as_ref().map(|i| i.id.as_str()));
            tracing::info!(
                request,
                "container of an unfinished start ended before its command ran; starting again"
            );
            lock(&sh.containers).by_request.remove(request);
            sh.close_gate(request);
            sh.update_status(request, |s| s.phase = Phase::Starting);
            return Ok(());
        }
        Step::Record => {}
    }
    // The container has ended: so does its proxy, before the record is sealed.
    sh.egress.stop(request).await;

    // An exited container goes after `done` (off the critical path), or
    // goes by itself; anything else (created, never started) before, as a
    // start would.
    let exited = inspected
        .as_ref()
        .is_some_and(|i| matches!(i.state, ContainerState::Exited(_)));
    let rm_first = inspected.is_some() && !exited;
    let id = inspected.as_ref().map(|i| i.id.clone());
    let removes_itself = inspected.as_ref().is_some_and(removed_by_runtime);
    let Verdict {
        outcome,
        exit_code,
        mut message,
    } = match &finalized {
        Some(rec) => Verdict {
            outcome: rec.outcome.unwrap_or(Outcome::GenericFailure),
            exit_code: rec.exit_code,
            message: rec.message.clone(),
        },
        None => decide(
            status.stop_reason,
            status.session_id.is_some(),
            inspected.as_ref(),
            cancelled,
            now,
        ),
    };

    // What the agent changed (issue 20): from the capture, or from the
    // record a crashed finish already sealed.
    let mut results = finalized
        .as_ref()
        .map(|r| crate::results::Captured {
            changes: r.changes.clone(),
            push: r.push.clone(),
        })
        .unwrap_or_default();
    if let (Some(sid), Some(record)) = (&status.session_id, &record) {
        let work = sh.settings.work_dir(sid);
        if finalized.is_none() {
            fault::point("finish-before-audit");
            record.reopen().map_err(FinishError::Reopen)?;
            let cap = sh.settings.audit_max_bytes;
            let collected = sh
                .runtime
                .collect_console(&work, &record.console_path(), cap)
                .await
                .map_err(FinishError::Console)?;
            if collected.truncated {
                add_note(
                    &mut message,
                    Some(format!("console output truncated at {cap} bytes")),
                );
            }
            let captured = super::results::capture(sh, sid, record, outcome).await;
            add_note(&mut message, captured.note());
            results = captured.clone();
            let image = inspected
                .as_ref()
                .map(|i| i.image.clone())
                .filter(|i| !i.id.is_empty());
            let final_message = message.clone();
            let note = seal_record(sh, request, record, move |rec| {
                (rec.changes, rec.push) = (captured.changes, captured.push);
                rec.end_timestamp = Some(now);
                rec.outcome = Some(outcome);
                rec.exit_code = exit_code;
                rec.image_id = image.as_ref().map(|i| i.id.clone());
                rec.image_digest = image.and_then(|i| i.digest);
                rec.message = final_message;
            })
            .await?;
            add_note(&mut message, note);
            fault::point("finish-after-audit");
        }
    }
    if rm_first {
        sh.runtime
            .remove(&name)
            .await
            .map_err(FinishError::Remove)?;
    }
    sh.succeeded(request);
    sh.close_gate(request);
    if !exited {
        sh.container_gone(&name, id.as_deref());
        lock(&sh.containers).by_request.remove(request);
    }
    sh.update_status(request, |s| {
        s.phase = Phase::Done;
        s.outcome = Some(outcome);
        s.exit_code = exit_code;
        s.finished_at = Some(now);
        s.message = message;
        s.stop_reason = None;
        (s.changes, s.push) = (results.changes, results.push);
    });
    tracing::info!(
        request,
        session = status.session_id.as_deref().unwrap_or(""),
        outcome = outcome.as_str(),
        exit_code,
        finish_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        "session done"
    );
    // The work folder (clone, credentials file, whatever the agent left:
    // possibly many files) goes after `done` too. The request stays busy
    // meanwhile, so the sweep leaves the folder to us; a crash before it is
    // gone leaves a stale folder the sweep removes.
    if let Some(sid) = &status.session_id {
        let mut note = None;
        remove_work_dir(sh, request, sid, &mut note).await;
        if note.is_some() {
            sh.update_status(request, |s| add_note(&mut s.message, note));
        }
    }
    if exited {
        fault::point("finish-after-done");
        if removes_itself {
            // Podman's clean-up removes it (`run --rm`): no `rm` of ours.
            // Should that fail, a later listing shows it and the planner
            // removes it (`table::GONE_GRACE`).
            sh.container_gone(&name, id.as_deref());
            tracing::debug!(request, container = %name, "container removes itself");
        } else {
            remove_exited(sh, request, &name, id.as_deref()).await;
        }
        fault::point("finish-after-rm");
    }
    Ok(())
}

/// The runtime removes this container itself: it exited, and it was made
/// to go once it did.
fn removed_by_runtime(i: &crate::runtime::ContainerInfo) -> bool {
    i.removes_itself && matches!(i.state, ContainerState::Exited(_))
}

/// Remove the exited container of a done session. A failure is only
/// logged: the planner removes containers of done requests on later passes.
/// Once removed, the runtime's late reports of it (its `create`, `start`,
/// `died` events lag) never put it back in the table, where the planner
/// would remove it a second time (issue 18 item 6).
async fn remove_exited(sh: &Shared, request: &str, name: &str, id: Option<&str>) {
    match sh.runtime.remove(name).await {
        Ok(()) => {
            sh.container_gone(name, id);
            tracing::debug!(request, container = name, "container removed");
        }
        Err(e) => {
            tracing::warn!(request, container = name, error = %e, "cannot remove the container of a done session; a later pass retries");
        }
    }
}

/// Append `note` to a status message.
fn add_note(message: &mut Option<String>, note: Option<String>) {
    let Some(note) = note else { return };
    *message = Some(match message.take() {
        Some(m) if !m.is_empty() => format!("{m}; {note}"),
        _ => note,
    });
}

/// Remove the session's work folder (clone, credentials file, whatever the
/// agent left in its home). A failure never holds the slot: the session
/// still ends, its message says so, and the sweep retries the folder
/// (`leftovers`) until it is gone.
async fn remove_work_dir(
    sh: &Arc<Shared>,
    request: &str,
    session_id: &str,
    message: &mut Option<String>,
) {
    let work = sh.settings.work_dir(session_id);
    if let Err(e) = super::workdir::remove(work.clone()).await {
        tracing::warn!(request, work_dir = %work.display(), error = %e, "cannot remove work folder; the sweep retries it");
        lock(&sh.leftovers)
            .failed
            .failed(session_id, std::time::Instant::now());
        add_note(
            message,
            Some(format!(
                "work folder {} not removed yet ({e}); {}",
                work.display(),
                super::leftovers::LEFT_NOTE_END
            )),
        );
    }
}

/// Seal `record` with its final `session.json` (the start form changed by
/// `finish`), on a blocking thread and within the record's budget.
/// `Ok(note)`: sealed, or deliberately left unsealed and incomplete (a
/// multi-linked file, or sealing failed `SEAL_ATTEMPTS` times); `note` is
/// for the status message (what was cut, why it was refused). `Err`: a
/// failure, retried later.
async fn seal_record(
    sh: &Shared,
    request: &str,
    record: &Record,
    finish: impl FnOnce(&mut crate::audit::SessionRecord),
) -> Result<Option<String>, FinishError> {
    let Some(mut rec) = record.read_session() else {
        return Err(FinishError::ReadRecord(record.dir.clone()));
    };
    finish(&mut rec);
    let opts = SealOptions {
        limits: Limits::with_max_bytes(sh.settings.audit_max_bytes),
        session_uid: sh.settings.host_session_uid(),
    };
    let to_seal = record.clone();
    let sealed = tokio::task::spawn_blocking(move || to_seal.seal(&rec, &opts))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if sealed.is_ok() {
        lock(&sh.seal_failures).clear(request);
    }
    match sealed {
        Ok(Sealed::Sealed { cut }) => {
            sh.metrics.audit_record(true);
            if let Some(c) = &cut {
                tracing::warn!(request, entries = c.entries, bytes = c.bytes, reason = %c.reason, "audit record sealed without what was over budget");
            }
            Ok(cut.map(|c| c.note()))
        }
        Ok(Sealed::Refused { why, cut }) => {
            sh.metrics.audit_record(false);
            tracing::error!(request, error = %why, "audit record refused for sealing");
            let mut note = Some(format!("audit record left incomplete: {why}"));
            add_note(&mut note, cut.map(|c| c.note()));
            Ok(note)
        }
        Err(e) => {
            let attempts = lock(&sh.seal_failures)
                .failed(request, std::time::Instant::now())
                .attempts;
            if attempts < SEAL_ATTEMPTS {
                return Err(FinishError::Seal(e));
            }
            lock(&sh.seal_failures).clear(request);
            // Whatever the agent left must not hold the slot, the container
            // or the work folder forever: the record stays incomplete.
            tracing::error!(request, attempts, error = %e, "giving up sealing the audit record");
            sh.metrics.audit_record(false);
            Ok(Some(format!(
                "audit record left incomplete: sealing failed {attempts} times: {e}"
            )))
        }
    }
}

/// Sealing attempts before a record is left incomplete (with backoff,
/// about 15 s in all).
const SEAL_ATTEMPTS: u32 = 5;
