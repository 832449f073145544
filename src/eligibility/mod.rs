//! The eligibility cache: a DashMap of users and organizations, kept fresh by
//! the change feed ([`feed`]).
//!
//! Invariants:
//! - a record never replaces a newer version of the same key;
//! - a tombstone deletes the key;
//! - readers get `Arc` clones, so no map guard outlives a lookup (and none is
//!   ever held across an `.await`).

pub mod feed;
pub mod snapshot;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::event::{EligibilityRecord, KeyKind, OrgRecord, UserRecord};

/// What applying one change-feed record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new key.
    Inserted,
    /// A newer version replaced an older one.
    Updated,
    /// The record was not newer than the stored one and was ignored.
    Stale,
    /// A tombstone removed the key.
    Deleted,
    /// A tombstone for a key that was not there.
    Absent,
}

/// The in-memory eligibility store.
#[derive(Debug, Default)]
pub struct Store {
    users: DashMap<String, Arc<UserRecord>>,
    orgs: DashMap<String, Arc<OrgRecord>>,
    user_count: AtomicI64,
    org_count: AtomicI64,
}

fn upsert<T>(
    map: &DashMap<String, Arc<T>>,
    count: &AtomicI64,
    id: &str,
    version: u64,
    rec: T,
    version_of: impl Fn(&T) -> u64,
) -> Applied {
    match map.entry(id.to_string()) {
        Entry::Occupied(mut e) => {
            if version_of(e.get()) >= version {
                Applied::Stale
            } else {
                e.insert(Arc::new(rec));
                Applied::Updated
            }
        }
        Entry::Vacant(e) => {
            e.insert(Arc::new(rec));
            count.fetch_add(1, Ordering::Relaxed);
            Applied::Inserted
        }
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with room for `users` and `orgs` records (a warm
    /// start knows how many are coming).
    pub fn with_capacity(users: usize, orgs: usize) -> Self {
        Store {
            users: DashMap::with_capacity(users),
            orgs: DashMap::with_capacity(orgs),
            ..Self::default()
        }
    }

    /// Apply a record, unless the store already has this or a newer version.
    pub fn apply(&self, rec: EligibilityRecord) -> Applied {
        match rec {
            EligibilityRecord::User(u) => {
                let (id, v) = (u.id.clone(), u.version);
                upsert(&self.users, &self.user_count, &id, v, u, |r| r.version)
            }
            EligibilityRecord::Organization(o) => {
                let (id, v) = (o.id.clone(), o.version);
                upsert(&self.orgs, &self.org_count, &id, v, o, |r| r.version)
            }
        }
    }

    /// Apply a tombstone: remove the key.
    pub fn delete(&self, kind: KeyKind, id: &str) -> Applied {
        let removed = match kind {
            KeyKind::User => self
                .users
                .remove(id)
                .map(|_| self.user_count.fetch_sub(1, Ordering::Relaxed)),
            KeyKind::Organization => self
                .orgs
                .remove(id)
                .map(|_| self.org_count.fetch_sub(1, Ordering::Relaxed)),
        };
        if removed.is_some() {
            Applied::Deleted
        } else {
            Applied::Absent
        }
    }

    /// The current record of a user.
    pub fn user(&self, id: &str) -> Option<Arc<UserRecord>> {
        self.users.get(id).map(|r| Arc::clone(r.value()))
    }

    /// The current record of an organization.
    pub fn organization(&self, id: &str) -> Option<Arc<OrgRecord>> {
        self.orgs.get(id).map(|r| Arc::clone(r.value()))
    }

    /// Every record, shared rather than copied (for snapshots): one `Arc`
    /// per record. Records applied while this runs may or may not be in it;
    /// call it while no record is being applied for a consistent view.
    pub fn shared_records(&self) -> (Vec<Arc<UserRecord>>, Vec<Arc<OrgRecord>>) {
        let users = self.users.iter().map(|r| Arc::clone(r.value())).collect();
        let orgs = self.orgs.iter().map(|r| Arc::clone(r.value())).collect();
        (users, orgs)
    }

    /// Number of user records.
    pub fn user_count(&self) -> i64 {
        self.user_count.load(Ordering::Relaxed)
    }

    /// Number of organization records.
    pub fn org_count(&self) -> i64 {
        self.org_count.load(Ordering::Relaxed)
    }
}

impl crate::decide::OrgLookup for Store {
    fn organization(&self, id: &str) -> Option<Arc<OrgRecord>> {
        Store::organization(self, id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::UsPersonStatus;

    /// A user with only the required fields (also used by the snapshot
    /// tests).
    pub(crate) fn bare_user(id: &str, version: u64, status: UsPersonStatus) -> UserRecord {
        UserRecord {
            id: id.into(),
            version,
            updated_at: None,
            us_person_status: status,
            citizenships: vec![],
            permanent_residencies: vec![],
            organization_id: None,
            relationship: None,
            verification: None,
            revocation: None,
        }
    }

    fn user(id: &str, version: u64, status: UsPersonStatus) -> EligibilityRecord {
        EligibilityRecord::User(bare_user(id, version, status))
    }

    #[test]
    fn older_version_never_overwrites_newer() {
        let s = Store::new();
        assert_eq!(
            s.apply(user("u", 2, UsPersonStatus::Citizen)),
            Applied::Inserted
        );
        assert_eq!(
            s.apply(user("u", 1, UsPersonStatus::ForeignPerson)),
            Applied::Stale
        );
        assert_eq!(
            s.apply(user("u", 2, UsPersonStatus::ForeignPerson)),
            Applied::Stale
        );
        assert_eq!(
            s.user("u").unwrap().us_person_status,
            UsPersonStatus::Citizen
        );
        assert_eq!(
            s.apply(user("u", 3, UsPersonStatus::ForeignPerson)),
            Applied::Updated
        );
        assert_eq!(
            s.user("u").unwrap().us_person_status,
            UsPersonStatus::ForeignPerson
        );
        assert_eq!(s.user_count(), 1);
    }

    #[test]
    fn tombstone_deletes() {
        let s = Store::new();
        s.apply(user("u", 1, UsPersonStatus::Citizen));
        assert_eq!(s.delete(KeyKind::User, "u"), Applied::Deleted);
        assert_eq!(s.delete(KeyKind::User, "u"), Applied::Absent);
        assert!(s.user("u").is_none());
        assert_eq!(s.user_count(), 0);
    }
}
