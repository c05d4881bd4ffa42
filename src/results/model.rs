//! What results capture records (issue 20), as plain data: the `changes`
//! summary and the `push` result of `session.json` and the status object,
//! and the base a session's clone started from, which the daemon keeps in
//! the session's work folder (never in the clone: the agent can rewrite
//! anything there, `refs/remotes` included). PURE: no IO.

use serde::{Deserialize, Serialize};

use crate::desired::{Repo, SecretSource};
use crate::observed::Outcome;

pub use crate::observed::{CUT_SHOWN, Changes, PushResult};

/// What the push of one session does, fixed at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPlan {
    /// `refs/heads/<branch>`, the template filled for this session.
    pub ref_name: String,
    pub when: Vec<Outcome>,
    /// The token's source (a name or a path, never a value).
    pub token: Option<SecretSource>,
    /// The repository the session cloned.
    pub repo: Repo,
}

/// What capture needs, fixed at the start of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `results_max_bytes` of the profile.
    pub max_bytes: u64,
    pub push: Option<PushPlan>,
}

impl Plan {
    /// The plan of one session of `profile`: its budget, and its push with
    /// the branch template filled (`None` when the profile does not push).
    pub fn of(
        profile: &crate::desired::Profile,
        repo: &Repo,
        vars: &crate::desired::BranchVars<'_>,
    ) -> Plan {
        Plan {
            max_bytes: profile.results_max_bytes,
            push: profile.push.as_ref().map(|p| PushPlan {
                ref_name: format!(
                    "refs/heads/{}",
                    crate::desired::expand_branch(&p.branch, vars)
                ),
                when: p.when.clone(),
                token: p.token.clone(),
                repo: repo.clone(),
            }),
        }
    }
}

/// A ref and the object it named.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RefTip {
    pub name: String,
    pub oid: String,
}

/// `results/base.json` in the work folder: the clone as it was before the
/// start gate opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// The commit HEAD named (`None`: an unborn HEAD, an empty repository).
    pub head: Option<String>,
    /// The branch HEAD named, when it named one.
    pub head_ref: Option<String>,
    /// Every ref of the clone: branches, remote-tracking refs, tags.
    pub refs: Vec<RefTip>,
    pub plan: Plan,
    /// Why this session's changes cannot be captured (a SHA-256
    /// repository), when they cannot: the session runs all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

impl Base {
    /// Every object id a base ref or HEAD names, sorted, without duplicates.
    pub fn tips(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .refs
            .iter()
            .map(|r| r.oid.clone())
            .chain(self.head.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_results_serialize_as_the_contract_says_issue_20() {
        let j = |p: &PushResult| serde_json::to_value(p).unwrap_or_default();
        assert_eq!(
            j(&PushResult::Pushed {
                ref_name: "refs/heads/a".into(),
                commit: "c0".into()
            }),
            serde_json::json!({"result": "pushed", "ref": "refs/heads/a", "commit": "c0"})
        );
        assert_eq!(
            j(&PushResult::NothingToPush),
            serde_json::json!({"result": "nothing_to_push"})
        );
        assert_eq!(
            j(&PushResult::Failed { reason: "x".into() }),
            serde_json::json!({"result": "failed", "reason": "x"})
        );
        assert_eq!(
            j(&PushResult::Skipped { why: "y".into() }),
            serde_json::json!({"result": "skipped", "why": "y"})
        );
    }

    #[test]
    fn a_plan_fills_the_branch_for_its_session_issue_20() {
        let mut p = crate::desired::Profile::minimal("rev", "img", &["x"]);
        let repo = Repo::Local("/srv/git/a".into());
        let vars = crate::desired::BranchVars {
            profile: "rev",
            session_id: "0011223344556677",
            request: "pr 7",
            work_unit: Some("PR-7"),
        };
        assert_eq!(Plan::of(&p, &repo, &vars).push, None);
        p.push = Some(crate::desired::Push {
            branch: "agentd/{request}/{work_unit}/{session_id}".into(),
            when: vec![Outcome::Success],
            token: None,
        });
        let plan = Plan::of(&p, &repo, &vars);
        assert_eq!(plan.max_bytes, crate::desired::DEFAULT_RESULTS_MAX_BYTES);
        assert_eq!(
            plan.push.map(|p| p.ref_name).unwrap_or_default(),
            "refs/heads/agentd/pr-7/PR-7/0011223344556677"
        );
    }

    #[test]
    fn changes_have_the_contract_keys_issue_20() {
        let v = serde_json::to_value(Changes::default()).unwrap_or_default();
        for k in [
            "base",
            "head",
            "commits",
            "files_changed",
            "insertions",
            "deletions",
            "bundle_bytes",
            "patch_bytes",
            "truncated",
        ] {
            assert!(v.get(k).is_some(), "{k} missing from {v}");
        }
        let mut c = Changes::default();
        assert_eq!(c.note(), None);
        c.cut("worktree.patch: over budget");
        assert!(c.truncated);
        assert!(c.note().unwrap_or_default().contains("over budget"));
        for i in 0..30 {
            c.cut(format!("file {i}"));
        }
        assert_eq!((c.cut.len(), c.cut_more), (CUT_SHOWN, 11));
        assert!(c.note().unwrap_or_default().contains("(and 11 more)"));
    }
}
