//! Applying scheduler decisions: materialize fires as request files in
//! `requests/` (atomically), cancel replaced runs, prune history, and persist
//! each profile's schedule state in `<state>/schedules/<profile>.json` so a
//! restart never fires the same minute twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Shared, lock};
use crate::schedule::{ProfileSchedule, SchedAction, Scheduler};

/// The scheduler plus what was last written to disk.
pub struct Schedules {
    dir: PathBuf,
    pub scheduler: Scheduler,
    persisted: BTreeMap<String, ProfileSchedule>,
}

impl Schedules {
    /// Load persisted state from `<state>/schedules/`.
    pub fn load(state: &Path) -> Schedules {
        let dir = state.join("schedules");
        let persisted = read_all(&dir);
        Schedules {
            dir,
            scheduler: Scheduler {
                profiles: persisted.clone(),
            },
            persisted,
        }
    }

    /// One tick: decide, apply, persist.
    pub fn tick(&mut self, sh: &Shared, desired: &crate::desired::Desired, now: &jiff::Zoned) {
        let missed_before = self.missed();
        let actions = {
            let store = lock(&sh.store);
            self.scheduler.tick(desired, store.all(), now)
        };
        for (profile, at) in self.missed() {
            if missed_before.get(&profile) != Some(&at) {
                sh.metrics.schedule_missed(&profile);
            }
        }
        for action in actions {
            apply(sh, &action);
        }
        self.persist();
    }

    /// The last missed fire of each profile (for the missed-fires counter).
    fn missed(&self) -> BTreeMap<String, jiff::Timestamp> {
        self.scheduler
            .profiles
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.last_missed?)))
            .collect()
    }

    fn persist(&mut self) {
        if self.scheduler.profiles == self.persisted {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot create schedules folder");
            return;
        }
        for (name, st) in &self.scheduler.profiles {
            if self.persisted.get(name) != Some(st) {
                let path = self.dir.join(format!("{name}.json"));
                // Not marked persisted on failure: the next tick retries.
                if let Err(e) = crate::fsutil::write_json_atomic(&path, st, 0o600) {
                    tracing::error!(error = %e, path = %path.display(), "cannot persist schedule state");
                    return;
                }
            }
        }
        for name in self
            .persisted
            .keys()
            .filter(|n| !self.scheduler.profiles.contains_key(*n))
        {
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.json")));
        }
        self.persisted = self.scheduler.profiles.clone();
    }
}

/// Every persisted schedule state (for the daemon and `agentd status`).
pub fn read_all(dir: &Path) -> BTreeMap<String, ProfileSchedule> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| {
            serde_json::from_slice::<ProfileSchedule>(&std::fs::read(e.path()).ok()?).ok()
        })
        .map(|s| (s.profile.clone(), s))
        .collect()
}

fn apply(sh: &Shared, action: &SchedAction) {
    match action {
        SchedAction::Materialize {
            profile,
            id,
            repo,
            scheduled_for,
        } => {
            let path = sh
                .settings
                .desired
                .join("requests")
                .join(format!("{id}.toml"));
            let text = format!(
                "# materialized by agentd from the schedule of profile `{profile}`\nprofile = {}\nrepo = {}\nscheduled_for = \"{}\"\n",
                toml_str(profile),
                toml_str(repo),
                scheduled_for.strftime("%Y-%m-%dT%H:%M:%S%:z")
            );
            match crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644) {
                Ok(()) => {
                    sh.metrics.schedule_fired(profile);
                    tracing::info!(profile, request = %id, scheduled_for = %scheduled_for, "schedule fired")
                }
                Err(e) => {
                    tracing::error!(profile, request = %id, error = %e, "cannot write scheduled request")
                }
            }
        }
        SchedAction::Cancel { request, path } => {
            tracing::info!(
                request,
                "concurrency_policy replace: cancelling the running fire"
            );
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(request, error = %e, "cannot remove replaced request file");
            }
        }
        SchedAction::Prune { request, path } => {
            tracing::info!(request, "history_limit: pruning finished scheduled request");
            if let Some(p) = path
                && let Err(e) = std::fs::remove_file(p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(request, error = %e, "cannot remove pruned request file");
                return;
            }
            let _ = std::fs::remove_file(sh.settings.spec_path(request));
            if let Err(e) = lock(&sh.store).remove(request) {
                tracing::warn!(request, error = %e, "cannot remove pruned status");
            }
        }
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::desired::{Desired, Profile, Repo, Schedule};
    use crate::schedule::{SchedAction, Scheduler};

    fn profile(expr: &str) -> Profile {
        Profile {
            repo: Some(Repo::Url("https://example.com/r.git".into())),
            schedule: Some(Schedule { expr: expr.into() }),
            ..Profile::minimal("nightly", "img", &["true"])
        }
    }

    /// The scheduler loop as the daemon runs it, on tokio's paused clock:
    /// sleep until the earliest next fire, tick, repeat. An hour of virtual
    /// time passes instantly; the loop wakes once per fire, never polls.
    #[tokio::test(start_paused = true)]
    async fn the_scheduler_sleeps_until_each_fire_and_fires_each_minute_once() {
        let base: jiff::Zoned = "2026-05-01T10:00:30[America/New_York]"
            .parse()
            .expect("time");
        let start = tokio::time::Instant::now();
        let clock = || {
            base.checked_add(jiff::SignedDuration::try_from(start.elapsed()).expect("span"))
                .expect("time")
        };
        let mut desired = Desired::default();
        desired
            .profiles
            .insert("nightly".into(), profile("*/5 * * * *"));
        let statuses = BTreeMap::new();
        let mut s = Scheduler::default();
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while start.elapsed() < std::time::Duration::from_secs(3600) {
            let now = clock();
            for a in s.tick(&desired, &statuses, &now) {
                if let SchedAction::Materialize { id, .. } = a {
                    fired.push(id);
                }
            }
            let next = s.next_wake().expect("a next fire");
            let wait = now.timestamp().duration_until(next).unsigned_abs();
            tokio::time::sleep(wait).await;
            wakeups += 1;
        }
        let want: Vec<String> = (1..=11)
            .map(|i| format!("nightly-20260501T10{:02}", i * 5))
            .chain(["nightly-20260501T1100".to_string()])
            .collect();
        assert_eq!(fired, want);
        assert!(wakeups <= 13, "woke {wakeups} times for 12 fires: polling?");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_inside_the_fired_minute_does_not_fire_again() {
        let mut desired = Desired::default();
        desired
            .profiles
            .insert("nightly".into(), profile("* * * * *"));
        let statuses = BTreeMap::new();
        let mut s = Scheduler::default();
        let t0: jiff::Zoned = "2026-05-01T10:00:30[UTC]".parse().expect("time");
        assert!(s.tick(&desired, &statuses, &t0).is_empty());
        let t1: jiff::Zoned = "2026-05-01T10:01:00.1[UTC]".parse().expect("time");
        assert_eq!(s.tick(&desired, &statuses, &t1).len(), 1);
        // The persisted state survives a restart; the same minute is covered.
        let mut restarted = Scheduler {
            profiles: s.profiles.clone(),
        };
        let t2: jiff::Zoned = "2026-05-01T10:01:40[UTC]".parse().expect("time");
        assert!(restarted.tick(&desired, &statuses, &t2).is_empty());
        // A clock stepping back does not fire the minute again either.
        let back: jiff::Zoned = "2026-05-01T10:00:59[UTC]".parse().expect("time");
        assert!(restarted.tick(&desired, &statuses, &back).is_empty());
        let t3: jiff::Zoned = "2026-05-01T10:02:00.5[UTC]".parse().expect("time");
        assert_eq!(restarted.tick(&desired, &statuses, &t3).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn suspend_stops_fires_and_resuming_does_not_backfill() {
        let mut desired = Desired::default();
        let mut p = profile("* * * * *");
        p.suspend = true;
        desired.profiles.insert("nightly".into(), p.clone());
        let statuses = BTreeMap::new();
        let mut s = Scheduler::default();
        for t in [
            "2026-05-01T10:00:30",
            "2026-05-01T10:01:00.1",
            "2026-05-01T10:05:00.1",
        ] {
            let now: jiff::Zoned = format!("{t}[UTC]").parse().expect("time");
            assert!(s.tick(&desired, &statuses, &now).is_empty(), "{t}");
        }
        assert_eq!(s.next_wake(), None);
        p.suspend = false;
        desired.profiles.insert("nightly".into(), p);
        let now: jiff::Zoned = "2026-05-01T10:05:30[UTC]".parse().expect("time");
        assert!(
            s.tick(&desired, &statuses, &now).is_empty(),
            "the 10:05 fire fell in the suspension"
        );
        let now: jiff::Zoned = "2026-05-01T10:06:00.2[UTC]".parse().expect("time");
        assert_eq!(s.tick(&desired, &statuses, &now).len(), 1);
    }
}
