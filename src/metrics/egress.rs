//! The egress proxy's metrics (issue 19), recorded through the
//! `egress::Observer` a session's proxy is handed: counters bound to the
//! session's profile once, so a relayed chunk costs one atomic add.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `agentd_egress_connections_total` | counter | `profile`, `decision` (`allowed`, `denied`) | connections to the egress proxies, by the policy's decision |
//! | `agentd_egress_bytes_total` | counter | `profile`, `direction` (`out`: agent to destination, `in`) | bytes relayed by the egress proxies |

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::egress::{Decision, Direction, Observer};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileDecision {
    profile: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileDirection {
    profile: String,
    direction: &'static str,
}

const DECISIONS: [Decision; 2] = [Decision::Allowed, Decision::Denied];
const DIRECTIONS: [Direction; 2] = [Direction::Out, Direction::In];

/// The two families.
#[derive(Default)]
pub struct EgressFamilies {
    connections: Family<ProfileDecision, Counter>,
    bytes: Family<ProfileDirection, Counter>,
}

impl EgressFamilies {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "agentd_egress_connections",
            "Connections to the egress proxies, by profile and the policy's decision",
            self.connections.clone(),
        );
        r.register(
            "agentd_egress_bytes",
            "Bytes relayed by the egress proxies, by profile and direction (out: from the agent)",
            self.bytes.clone(),
        );
    }

    /// An observer recording into this profile's series.
    pub fn observer(&self, profile: &str) -> Arc<dyn Observer> {
        let c = |d: Decision| {
            self.connections
                .get_or_create(&ProfileDecision {
                    profile: profile.to_string(),
                    decision: d.as_str(),
                })
                .clone()
        };
        let b = |d: Direction| {
            self.bytes
                .get_or_create(&ProfileDirection {
                    profile: profile.to_string(),
                    direction: d.as_str(),
                })
                .clone()
        };
        Arc::new(SessionCounters {
            allowed: c(Decision::Allowed),
            denied: c(Decision::Denied),
            out: b(Direction::Out),
            inn: b(Direction::In),
        })
    }

    /// Drop a vanished profile's series.
    pub fn remove(&self, profile: &str) {
        for d in DECISIONS {
            self.connections.remove(&ProfileDecision {
                profile: profile.to_string(),
                decision: d.as_str(),
            });
        }
        for d in DIRECTIONS {
            self.bytes.remove(&ProfileDirection {
                profile: profile.to_string(),
                direction: d.as_str(),
            });
        }
    }
}

struct SessionCounters {
    allowed: Counter,
    denied: Counter,
    out: Counter,
    inn: Counter,
}

impl Observer for SessionCounters {
    fn connection(&self, decision: Decision) {
        match decision {
            Decision::Allowed => self.allowed.inc(),
            Decision::Denied => self.denied.inc(),
        };
    }
    fn bytes(&self, direction: Direction, n: u64) {
        match direction {
            Direction::Out => self.out.inc_by(n),
            Direction::In => self.inn.inc_by(n),
        };
    }
}
