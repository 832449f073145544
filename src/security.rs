//! Least privilege on a secured cluster: the ACLs each principal needs, as
//! a pure function of the configuration ([`acl_plan`]). `clearance acls`
//! prints them, one per line, in the form `scripts/kafka acls` (and
//! `scripts/kafka-acls.java`) reads; docs/security.md explains the table.
//!
//! Kafka's implications are relied on: `read` and `write` imply `describe`
//! (of a topic or group), and since Kafka 3.0 (KIP-679) an idempotent
//! producer needs `write` on some topic instead of `idempotent_write` on the
//! cluster. Nothing here grants `create`: on a secured cluster an admin
//! creates the topics (`clearance topics create` with admin credentials)
//! and the engine runs with `topics.create_missing = false`.

use std::fmt;

use crate::config::{Config, DeliveryMode};

/// One ALLOW ACL, from any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// `User:<name>`.
    pub principal: String,
    /// `topic`, `group`, `transactional_id` or `cluster`.
    pub resource: &'static str,
    /// `literal` or `prefixed`.
    pub pattern: &'static str,
    /// The resource name (or prefix).
    pub name: String,
    /// `read`, `write`, `describe`, ...
    pub operation: &'static str,
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.principal, self.resource, self.pattern, self.name, self.operation
        )
    }
}

/// The SCRAM user names of the four roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principals {
    /// The engine (`clearance run`).
    pub engine: String,
    /// An API frontend: sends requests.
    pub frontend: String,
    /// The policy publisher (`clearance policy publish`).
    pub publisher: String,
    /// The producer of the eligibility change feed.
    pub feeder: String,
}

impl Default for Principals {
    fn default() -> Self {
        Self {
            engine: "engine".into(),
            frontend: "frontend".into(),
            publisher: "publisher".into(),
            feeder: "feeder".into(),
        }
    }
}

fn acl(
    user: &str,
    resource: &'static str,
    pattern: &'static str,
    name: &str,
    operation: &'static str,
) -> Acl {
    Acl {
        principal: format!("User:{user}"),
        resource,
        pattern,
        name: name.to_string(),
        operation,
    }
}

/// What the engine needs: read the requests, the change feed and the policy
/// topic; write decisions and dead letters; its consumer group (read: join,
/// commit); describe the group ids of its assign-only readers (they never
/// commit); with exactly-once, its transactional ids (`<group_id>-…`).
pub fn engine_acls(cfg: &Config, user: &str) -> Vec<Acl> {
    let t = &cfg.topics;
    let g = &cfg.kafka.group_id;
    let mut v = vec![
        acl(user, "topic", "literal", &t.requests, "read"),
        acl(user, "topic", "literal", &t.eligibility, "read"),
        acl(user, "topic", "literal", &t.policy, "read"),
        acl(user, "topic", "literal", &t.decisions, "write"),
        acl(user, "topic", "literal", &t.deadletter, "write"),
        acl(user, "group", "literal", g, "read"),
        acl(
            user,
            "group",
            "literal",
            &format!("{g}-feed-unused"),
            "describe",
        ),
        acl(
            user,
            "group",
            "literal",
            &format!("{g}-policy-unused"),
            "describe",
        ),
    ];
    if cfg.engine.delivery == DeliveryMode::ExactlyOnce {
        v.push(acl(
            user,
            "transactional_id",
            "prefixed",
            &format!("{g}-"),
            "write",
        ));
    }
    v
}

/// What a frontend needs: write requests; read its own reply topics
/// (`access.replies.<user>…`, for deployments that have them: the engine
/// writes none). Never the decisions topic.
pub fn frontend_acls(cfg: &Config, user: &str) -> Vec<Acl> {
    vec![
        acl(user, "topic", "literal", &cfg.topics.requests, "write"),
        acl(
            user,
            "topic",
            "prefixed",
            &format!("access.replies.{user}"),
            "read",
        ),
    ]
}

/// What the policy publisher needs: write the policy topic, nothing else.
pub fn publisher_acls(cfg: &Config, user: &str) -> Vec<Acl> {
    vec![acl(user, "topic", "literal", &cfg.topics.policy, "write")]
}

/// What the change-feed producer needs: write the change feed, nothing
/// else. (Whoever holds this can make anyone eligible: see
/// docs/security.md.)
pub fn feeder_acls(cfg: &Config, user: &str) -> Vec<Acl> {
    vec![acl(
        user,
        "topic",
        "literal",
        &cfg.topics.eligibility,
        "write",
    )]
}

/// Every ACL of the four roles for the topics and group of `cfg`.
pub fn acl_plan(cfg: &Config, p: &Principals) -> Vec<Acl> {
    let mut v = engine_acls(cfg, &p.engine);
    v.extend(frontend_acls(cfg, &p.frontend));
    v.extend(publisher_acls(cfg, &p.publisher));
    v.extend(feeder_acls(cfg, &p.feeder));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[Acl]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_engine_reads_inputs_and_writes_outputs_only() {
        let cfg = Config::default();
        let l = lines(&engine_acls(&cfg, "engine"));
        assert!(l.contains(&"User:engine topic literal access.requests read".to_string()));
        assert!(l.contains(&"User:engine topic literal access.decisions write".to_string()));
        assert!(l.contains(&"User:engine group literal clearance read".to_string()));
        assert!(!l.iter().any(|x| x.contains("decisions read")), "{l:?}");
        assert!(!l.iter().any(|x| x.contains("transactional_id")), "{l:?}");
        assert!(!l.iter().any(|x| x.ends_with(" create")), "{l:?}");
    }

    #[test]
    fn exactly_once_adds_the_transactional_ids_of_the_group() {
        let mut cfg = Config::default();
        cfg.engine.delivery = DeliveryMode::ExactlyOnce;
        let l = lines(&engine_acls(&cfg, "engine"));
        assert!(l.contains(&"User:engine transactional_id prefixed clearance- write".to_string()));
    }

    #[test]
    fn publisher_and_feeder_write_one_topic_each() {
        let cfg = Config::default();
        assert_eq!(
            lines(&publisher_acls(&cfg, "publisher")),
            ["User:publisher topic literal clearance.policy write"]
        );
        assert_eq!(
            lines(&feeder_acls(&cfg, "feeder")),
            ["User:feeder topic literal eligibility.changes write"]
        );
        let f = lines(&frontend_acls(&cfg, "frontend"));
        assert!(!f.iter().any(|x| x.contains("decisions")), "{f:?}");
    }
}
