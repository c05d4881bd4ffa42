//! Prometheus metrics: one registry the daemon makes at start and hands to
//! its parts (an observer: the runtime's calls through
//! `runtime::CallObserver`, phase changes through the status store's
//! `status::StatusObserver`, the rest from the executor and the loop), and
//! a small HTTP server (`--metrics-listen`) that serves it on `/metrics` in
//! the OpenMetrics text format from its own thread.
//!
//! Recording is always on and cheap (atomics behind a map lookup); serving is
//! off unless the operator asks for it. Counters start from zero at every
//! start of the daemon (Prometheus treats that as a counter reset).
//!
//! Every label value comes from a bounded set: phases, outcomes and Podman
//! verbs are fixed lists; profile names are bounded by the desired dir, and
//! the series of a profile that is gone from the desired dir and from the
//! status store are removed (`retain_profiles`). Request and session ids are
//! never labels.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `agentd_build_info` | gauge (always 1) | `version` | the daemon's version |
//! | `agentd_sessions_in_phase` | gauge | `phase` | status records in each phase (`pending`, `starting`, `running`, `finishing`, `done`, `invalid`), as of the last reconcile pass |
//! | `agentd_sessions_finished_total` | counter | `profile`, `outcome` | sessions that reached `done`, by outcome |
//! | `agentd_sessions_duration_seconds` | histogram | `profile` | `started_at` to `finished_at` of finished sessions whose command ran |
//! | `agentd_sessions_start_latency_seconds` | histogram | `profile` | admission (`created_at`) to the command running (`starting` -> `running`) |
//! | `agentd_reconcile_passes_total` | counter | | reconcile passes run |
//! | `agentd_reconcile_pass_duration_seconds` | histogram | | wall time of one pass (scan, schedule, plan, apply) |
//! | `agentd_desired_files` | gauge | `kind` (`profile`, `request`) | files in the desired dir, valid or not, as of the last pass |
//! | `agentd_desired_invalid_files` | gauge | `kind` | of those, the rejected ones |
//! | `agentd_podman_calls_total` | counter | `verb` (`info`, `run`, `container inspect`, `image inspect`, `secret inspect`, `stop`, `rm`, `ps`, `other`) | Podman CLI calls (the long-lived follower of container changes is not one) |
//! | `agentd_podman_call_errors_total` | counter | `verb` | of those, the failed ones (non-zero exit, timeout, cannot run; "no such container" is an answer, not an error) |
//! | `agentd_podman_call_duration_seconds` | histogram | `verb` | wall time of each call |
//! | `agentd_schedule_fires_total` | counter | `profile` | schedule fires materialized as request files |
//! | `agentd_schedule_missed_fires_total` | counter | `profile` | fires given up (too late: past their minute and `starting_deadline`); the fires missed during one downtime count once, as `last_missed` reports them |
//! | `agentd_audit_records_sealed_total` | counter | | audit records sealed |
//! | `agentd_audit_records_incomplete_total` | counter | | audit records deliberately left unsealed and incomplete |
//! | `agentd_egress_connections_total` | counter | `profile`, `decision` | egress proxy connections (`egress.rs`) |
//! | `agentd_egress_bytes_total` | counter | `profile`, `direction` | bytes the egress proxies relayed (`egress.rs`) |

mod egress;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::observed::{Outcome, Phase, Status, StatusCounts};

mod serve;
pub use serve::{bind, serve};

/// Every phase, for the phase gauge (all are always exported, 0 included).
pub const PHASES: [Phase; 6] = Phase::ALL;

/// Every outcome, to remove a vanished profile's series.
const OUTCOMES: [Outcome; 13] = [
    Outcome::Success,
    Outcome::GenericFailure,
    Outcome::UsageError,
    Outcome::Blocked,
    Outcome::NothingReady,
    Outcome::WorkFailed,
    Outcome::InfrastructureFailure,
    Outcome::CommandNotExecutable,
    Outcome::CommandNotFound,
    Outcome::TerminatedBySignal,
    Outcome::TimedOut,
    Outcome::Cancelled,
    Outcome::StartFailed,
];

/// The verbs of agentd's Podman CLI calls; anything else is counted as
/// `other`. (The long-lived follower of container changes is not a call.)
const VERBS: [&str; 8] = [
    "info",
    "run",
    "container inspect",
    "image inspect",
    "secret inspect",
    "stop",
    "rm",
    "ps",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileOutcome {
    profile: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabel {
    profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabel {
    verb: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of session durations and start latencies: 0.1 s to ~27 h.
fn session_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
        86400.0,
    ])
}

/// Buckets of Podman calls and reconcile passes: 1 ms to 2 min.
fn call_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    ])
}

/// The metric families. One per daemon, handed in (`Arc<Metrics>`).
pub struct Metrics {
    registry: Registry,
    sessions_in_phase: Family<PhaseLabel, Gauge>,
    sessions_finished: Family<ProfileOutcome, Counter>,
    session_duration: HistogramFamily<ProfileLabel>,
    start_latency: HistogramFamily<ProfileLabel>,
    passes: Counter,
    pass_duration: Histogram,
    desired_files: Family<KindLabel, Gauge>,
    desired_invalid: Family<KindLabel, Gauge>,
    podman_calls: Family<VerbLabel, Counter>,
    podman_errors: Family<VerbLabel, Counter>,
    podman_duration: HistogramFamily<VerbLabel>,
    schedule_fires: Family<ProfileLabel, Counter>,
    schedule_missed: Family<ProfileLabel, Counter>,
    audit_sealed: Counter,
    audit_incomplete: Counter,
    egress: egress::EgressFamilies,
    /// Profiles that may have series (to remove them when they go).
    profiles: Mutex<BTreeSet<String>>,
}

impl crate::runtime::CallObserver for Metrics {
    fn runtime_call(&self, verb: &str, ok: bool, elapsed: Duration) {
        self.podman_call(verb, ok, elapsed);
    }
}

impl crate::status::StatusObserver for Metrics {
    fn status_changed(&self, before: Option<Phase>, after: &Status) {
        Metrics::status_changed(self, before, after);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "agentd_build_info",
            "The daemon's version; always 1",
            build_info,
        );
        let m = Metrics {
            sessions_in_phase: Family::default(),
            sessions_finished: Family::default(),
            session_duration: Family::new_with_constructor(session_histogram),
            start_latency: Family::new_with_constructor(session_histogram),
            passes: Counter::default(),
            pass_duration: call_histogram(),
            desired_files: Family::default(),
            desired_invalid: Family::default(),
            podman_calls: Family::default(),
            podman_errors: Family::default(),
            podman_duration: Family::new_with_constructor(call_histogram),
            schedule_fires: Family::default(),
            schedule_missed: Family::default(),
            audit_sealed: Counter::default(),
            audit_incomplete: Counter::default(),
            egress: egress::EgressFamilies::default(),
            profiles: Mutex::default(),
            registry: Registry::default(),
        };
        for p in PHASES {
            m.sessions_in_phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .set(0);
        }
        for kind in ["profile", "request"] {
            m.desired_files.get_or_create(&KindLabel { kind }).set(0);
            m.desired_invalid.get_or_create(&KindLabel { kind }).set(0);
        }
        let r = &mut registry;
        r.register(
            "agentd_sessions_in_phase",
            "Status records in each phase as of the last reconcile pass",
            m.sessions_in_phase.clone(),
        );
        r.register(
            "agentd_sessions_finished",
            "Sessions that reached done, by profile and outcome",
            m.sessions_finished.clone(),
        );
        r.register(
            "agentd_sessions_duration_seconds",
            "Time from the command running to the session done, of sessions whose command ran",
            m.session_duration.clone(),
        );
        r.register(
            "agentd_sessions_start_latency_seconds",
            "Time from the request's admission to its command running",
            m.start_latency.clone(),
        );
        r.register(
            "agentd_reconcile_passes",
            "Reconcile passes run",
            m.passes.clone(),
        );
        r.register(
            "agentd_reconcile_pass_duration_seconds",
            "Wall time of one reconcile pass",
            m.pass_duration.clone(),
        );
        r.register(
            "agentd_desired_files",
            "Profile and request files in the desired dir as of the last pass, valid or not",
            m.desired_files.clone(),
        );
        r.register(
            "agentd_desired_invalid_files",
            "Rejected profile and request files in the desired dir as of the last pass",
            m.desired_invalid.clone(),
        );
        r.register(
            "agentd_podman_calls",
            "Podman CLI calls, by verb",
            m.podman_calls.clone(),
        );
        r.register(
            "agentd_podman_call_errors",
            "Podman CLI calls that failed (non-zero exit, timeout, cannot run), by verb",
            m.podman_errors.clone(),
        );
        r.register(
            "agentd_podman_call_duration_seconds",
            "Wall time of Podman CLI calls, by verb",
            m.podman_duration.clone(),
        );
        r.register(
            "agentd_schedule_fires",
            "Schedule fires written as request files, by profile",
            m.schedule_fires.clone(),
        );
        r.register(
            "agentd_schedule_missed_fires",
            "Schedule fires given up because their starting_deadline passed, by profile",
            m.schedule_missed.clone(),
        );
        r.register(
            "agentd_audit_records_sealed",
            "Audit records sealed",
            m.audit_sealed.clone(),
        );
        r.register(
            "agentd_audit_records_incomplete",
            "Audit records deliberately left unsealed and incomplete",
            m.audit_incomplete.clone(),
        );
        m.egress.register(r);
        Metrics { registry, ..m }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the Prometheus text format 0.0.4, for scrapers that
    /// do not ask for OpenMetrics (`curl`, `promtool check metrics`).
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    fn note_profile(&self, profile: &str) {
        let mut p = crate::sync::lock(&self.profiles);
        if !p.contains(profile) {
            p.insert(profile.to_string());
        }
    }

    /// A status record changed from `before` to `after`: count a finished
    /// session, observe its duration and start latency.
    pub fn status_changed(&self, before: Option<Phase>, after: &Status) {
        if before == Some(after.phase) {
            return;
        }
        let profile = ProfileLabel {
            profile: after.profile.clone(),
        };
        match after.phase {
            Phase::Running if before == Some(Phase::Starting) => {
                if let (Some(c), Some(s)) = (after.created_at, after.started_at) {
                    self.note_profile(&after.profile);
                    self.start_latency
                        .get_or_create(&profile)
                        .observe(seconds_between(c, s));
                }
            }
            Phase::Done => {
                let Some(outcome) = after.outcome else { return };
                self.note_profile(&after.profile);
                self.sessions_finished
                    .get_or_create(&ProfileOutcome {
                        profile: after.profile.clone(),
                        outcome: outcome.as_str(),
                    })
                    .inc();
                if let (Some(s), Some(f)) = (after.started_at, after.finished_at) {
                    self.session_duration
                        .get_or_create(&profile)
                        .observe(seconds_between(s, f));
                }
            }
            _ => {}
        }
    }

    /// After a reconcile pass: its duration, the phase counts of the status
    /// store, the desired dir's file counts (`invalid_requests` of them
    /// rejected request files); and drop the series of profiles no longer in
    /// the desired dir nor in any status record. Counts come kept up to date
    /// (`StatusCounts`, `Source::invalid_requests`): nothing here walks the
    /// records or the files (issue 12).
    pub fn pass_done(
        &self,
        elapsed: Duration,
        statuses: &StatusCounts,
        desired: &crate::desired::Desired,
        invalid_requests: usize,
    ) {
        self.passes.inc();
        self.pass_duration.observe(elapsed.as_secs_f64());
        let keep: BTreeSet<&str> = desired
            .profiles
            .keys()
            .map(String::as_str)
            .chain(statuses.profiles())
            .collect();
        for p in PHASES {
            self.sessions_in_phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .set(i64::try_from(statuses.phase(p)).unwrap_or(i64::MAX));
        }
        let gauge = |f: &Family<KindLabel, Gauge>, kind, n: usize| {
            f.get_or_create(&KindLabel { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        gauge(
            &self.desired_files,
            "profile",
            desired.profiles.len() + desired.invalid_profiles.len(),
        );
        gauge(&self.desired_files, "request", desired.requests.len());
        gauge(
            &self.desired_invalid,
            "profile",
            desired.invalid_profiles.len(),
        );
        gauge(&self.desired_invalid, "request", invalid_requests);
        self.retain_profiles(&keep);
    }

    /// Remove every series of a profile not in `keep`.
    fn retain_profiles(&self, keep: &BTreeSet<&str>) {
        let gone: Vec<String> = {
            let mut p = crate::sync::lock(&self.profiles);
            let gone = p
                .iter()
                .filter(|n| !keep.contains(n.as_str()))
                .cloned()
                .collect();
            p.retain(|n| keep.contains(n.as_str()));
            gone
        };
        for profile in gone {
            for o in OUTCOMES {
                self.sessions_finished.remove(&ProfileOutcome {
                    profile: profile.clone(),
                    outcome: o.as_str(),
                });
            }
            let l = ProfileLabel { profile };
            self.session_duration.remove(&l);
            self.start_latency.remove(&l);
            self.schedule_fires.remove(&l);
            self.schedule_missed.remove(&l);
            self.egress.remove(&l.profile);
        }
    }

    /// One Podman CLI call ended.
    pub fn podman_call(&self, verb: &str, ok: bool, elapsed: Duration) {
        let verb = VERBS
            .iter()
            .find(|v| **v == verb)
            .copied()
            .unwrap_or("other");
        let l = VerbLabel { verb };
        self.podman_calls.get_or_create(&l).inc();
        if !ok {
            self.podman_errors.get_or_create(&l).inc();
        }
        self.podman_duration
            .get_or_create(&l)
            .observe(elapsed.as_secs_f64());
    }

    /// A schedule fire was written as a request file.
    pub fn schedule_fired(&self, profile: &str) {
        self.note_profile(profile);
        self.schedule_fires
            .get_or_create(&ProfileLabel {
                profile: profile.to_string(),
            })
            .inc();
    }

    /// A schedule fire was given up (its starting deadline passed).
    pub fn schedule_missed(&self, profile: &str) {
        self.note_profile(profile);
        self.schedule_missed
            .get_or_create(&ProfileLabel {
                profile: profile.to_string(),
            })
            .inc();
    }

    /// What a session's egress proxy records into (issue 19).
    pub fn egress_observer(&self, profile: &str) -> std::sync::Arc<dyn crate::egress::Observer> {
        self.note_profile(profile);
        self.egress.observer(profile)
    }

    /// An audit record was sealed (`true`) or left incomplete (`false`).
    pub fn audit_record(&self, sealed: bool) {
        if sealed {
            self.audit_sealed.inc();
        } else {
            self.audit_incomplete.inc();
        }
    }
}

/// OpenMetrics text as Prometheus text format 0.0.4. The two differ, for
/// what this registry holds (counters, gauges, classic histograms, no
/// exemplars), only in metadata: a counter family is named without
/// `_total` in OpenMetrics and with it in 0.0.4, and 0.0.4 has no `# UNIT`
/// or `# EOF` lines. Samples are the same.
fn openmetrics_to_text(om: &str) -> String {
    let counters: BTreeSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn seconds_between(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    let ms = b.as_millisecond().saturating_sub(a.as_millisecond());
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_a_vanished_profile_are_removed_issue_11() {
        let m = Metrics::new();
        let mut s = Status::new("r1", "gone-profile");
        s.phase = Phase::Done;
        s.outcome = Some(Outcome::Success);
        m.status_changed(Some(Phase::Finishing), &s);
        assert!(m.encode().contains("profile=\"gone-profile\""));
        // Still in a status record: kept.
        let desired = crate::desired::Desired::default();
        m.pass_done(Duration::ZERO, &StatusCounts::of([&s]), &desired, 0);
        assert!(m.encode().contains("profile=\"gone-profile\""));
        // In neither the desired dir nor the store: removed.
        m.pass_done(Duration::ZERO, &StatusCounts::default(), &desired, 0);
        assert!(!m.encode().contains("gone-profile"), "{}", m.encode());
    }

    #[test]
    fn image_and_secret_inspect_are_counted_under_their_own_verb_issue_17() {
        let m = Metrics::new();
        m.podman_call("image inspect", false, Duration::from_millis(3));
        m.podman_call("secret inspect", true, Duration::from_millis(3));
        let text = m.encode();
        for want in [
            "agentd_podman_call_errors_total{verb=\"image inspect\"} 1",
            "agentd_podman_calls_total{verb=\"secret inspect\"} 1",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(!text.contains("verb=\"other\""), "{text}");
    }

    #[test]
    fn unknown_podman_verbs_are_counted_as_other_issue_11() {
        let m = Metrics::new();
        m.podman_call("pull", false, Duration::from_millis(3));
        m.podman_call("container inspect", true, Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("agentd_podman_call_errors_total{verb=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("agentd_podman_calls_total{verb=\"container inspect\"} 1"),
            "{text}"
        );
    }
}
