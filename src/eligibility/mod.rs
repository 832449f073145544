//! The eligibility cache: a DashMap of users and organizations, kept fresh by
//! the change feed ([`feed`]).
//!
//! Invariants:
//! - a record never replaces a newer version of the same key, even across a
//!   tombstone: a tombstone deletes the key but leaves a *deletion marker*
//!   with the version it deleted, and a later record of that or an older
//!   version is stale; a newer one is applied and clears the marker;
//! - the markers are bounded (`engine.deletion_markers_max`): beyond the
//!   bound the oldest is evicted, and a very late older record of an evicted
//!   key could come back;
//! - readers get owned records (a user unpacked, an organization's `Arc`
//!   cloned), so no map guard outlives a lookup (and none is ever held
//!   across an `.await`).
//!
//! Users, by far the most numerous, are kept packed ([`packed`]): one
//! allocation of about 70 bytes per user instead of a tree of a dozen
//! (BENCHMARKS.md, "The cache at scale"). A lookup unpacks the record.
//! Organizations, a few per thousand users, stay as decoded.

pub mod feed;
pub mod packed;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::event::{EligibilityRecord, KeyKind, OrgRecord, UserRecord};
use crate::metrics as m;
use packed::PackedUser;

/// The maps' hasher: foldhash, several times faster than the standard
/// SipHash on short ids. Its per-process random seed keeps the
/// protection against crafted collisions.
type Hasher = foldhash::fast::RandomState;

/// Default bound on the deletion markers held (`engine.deletion_markers_max`).
pub const DEFAULT_DELETION_MARKERS_MAX: usize = 1_000_000;

/// What applying one change-feed record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new key.
    Inserted,
    /// A newer version replaced an older one.
    Updated,
    /// The record was not newer than the stored one, or than the version a
    /// tombstone deleted, and was ignored.
    Stale,
    /// A tombstone removed the key (and left a deletion marker).
    Deleted,
    /// A tombstone for a key that was not there (a marker it had stays).
    Absent,
}

/// A deletion marker: a key a tombstone deleted, and the version of the
/// record it deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionMarker {
    /// User or organization.
    pub kind: KeyKind,
    /// The id (without the `user:` / `organization:` prefix).
    pub id: Arc<str>,
    /// The highest version seen of the key: records up to it are stale.
    pub version: u64,
}

/// The deletion markers, in the order they were set (the oldest is evicted
/// first). Memory per marker: the id once (shared by the map and the
/// order), a hash-map slot and a B-tree entry.
#[derive(Debug)]
struct Markers {
    max: usize,
    next: u64,
    /// Per kind: id → (deleted version, sequence number).
    users: HashMap<Arc<str>, (u64, u64)>,
    orgs: HashMap<Arc<str>, (u64, u64)>,
    /// Sequence number → key, oldest first.
    order: BTreeMap<u64, (KeyKind, Arc<str>)>,
}

impl Default for Markers {
    fn default() -> Self {
        Markers {
            max: DEFAULT_DELETION_MARKERS_MAX,
            next: 0,
            users: HashMap::new(),
            orgs: HashMap::new(),
            order: BTreeMap::new(),
        }
    }
}

impl Markers {
    fn of(&mut self, kind: KeyKind) -> &mut HashMap<Arc<str>, (u64, u64)> {
        match kind {
            KeyKind::User => &mut self.users,
            KeyKind::Organization => &mut self.orgs,
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    /// The version deleted from `kind:id`, if a marker is held.
    fn version(&mut self, kind: KeyKind, id: &str) -> Option<u64> {
        if self.order.is_empty() {
            return None;
        }
        self.of(kind).get(id).map(|(v, _)| *v)
    }

    fn remove(&mut self, kind: KeyKind, id: &str) {
        if let Some((_, seq)) = self.of(kind).remove(id) {
            self.order.remove(&seq);
        }
    }

    /// Mark `kind:id` deleted at `version` (a marker it has keeps the
    /// higher version and its age), then evict the oldest beyond the
    /// bound.
    fn set(&mut self, kind: KeyKind, id: &str, version: u64) {
        if let Some((v, _)) = self.of(kind).get_mut(id) {
            *v = (*v).max(version);
            return;
        }
        let id: Arc<str> = Arc::from(id);
        let seq = self.next;
        self.next += 1;
        self.of(kind).insert(Arc::clone(&id), (version, seq));
        self.order.insert(seq, (kind, id));
        let mut evicted = 0u64;
        while self.order.len() > self.max {
            let Some((_, (kind, id))) = self.order.pop_first() else {
                break;
            };
            self.of(kind).remove(&*id);
            evicted += 1;
        }
        if evicted > 0 {
            metrics::counter!(m::DELETION_MARKER_EVICTIONS_TOTAL).increment(evicted);
        }
    }
}

/// The in-memory eligibility store.
#[derive(Debug, Default)]
pub struct Store {
    /// Users, packed, keyed (hashed and compared) by their id.
    users: DashMap<PackedUser, (), Hasher>,
    orgs: DashMap<String, Arc<OrgRecord>, Hasher>,
    user_count: AtomicI64,
    org_count: AtomicI64,
    /// Locked only while a map entry of the key is held (map shard, then
    /// markers: one lock order), never the other way round.
    markers: Mutex<Markers>,
}

/// Insert or update `id`, unless the map holds this or a newer version, or
/// a tombstone deleted this or a newer version.
#[allow(clippy::too_many_arguments)]
fn upsert<T>(
    map: &DashMap<String, Arc<T>, Hasher>,
    count: &AtomicI64,
    markers: &Mutex<Markers>,
    kind: KeyKind,
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
            // The entry (its shard) stays locked: no tombstone of this key
            // can come in between.
            let mut mk = lock(markers);
            if let Some(deleted) = mk.version(kind, id) {
                if deleted >= version {
                    return Applied::Stale;
                }
                mk.remove(kind, id);
            }
            drop(mk);
            e.insert(Arc::new(rec));
            count.fetch_add(1, Ordering::Relaxed);
            Applied::Inserted
        }
    }
}

/// Remove `id`, leaving a deletion marker with the version it had.
fn remove<T>(
    map: &DashMap<String, Arc<T>, Hasher>,
    count: &AtomicI64,
    markers: &Mutex<Markers>,
    kind: KeyKind,
    id: &str,
    version_of: impl Fn(&T) -> u64,
) -> Applied {
    match map.entry(id.to_string()) {
        Entry::Occupied(e) => {
            let mut mk = lock(markers);
            let (_, rec) = e.remove_entry();
            mk.set(kind, id, version_of(&rec));
            drop(mk);
            count.fetch_sub(1, Ordering::Relaxed);
            Applied::Deleted
        }
        Entry::Vacant(_) => Applied::Absent,
    }
}

/// [`upsert`] for a packed user: the key carries the record.
fn upsert_user(
    map: &DashMap<PackedUser, (), Hasher>,
    count: &AtomicI64,
    markers: &Mutex<Markers>,
    rec: PackedUser,
) -> Applied {
    let version = rec.version();
    match map.entry(rec) {
        Entry::Occupied(e) => {
            if e.key().version() >= version {
                Applied::Stale
            } else {
                // The entry's key is the new packed record.
                e.replace_entry(());
                Applied::Updated
            }
        }
        Entry::Vacant(e) => {
            let mut mk = lock(markers);
            let id = e.key().id();
            if let Some(deleted) = mk.version(KeyKind::User, id) {
                if deleted >= version {
                    return Applied::Stale;
                }
                mk.remove(KeyKind::User, id);
            }
            drop(mk);
            e.insert(());
            count.fetch_add(1, Ordering::Relaxed);
            Applied::Inserted
        }
    }
}

/// [`remove`] for a packed user.
fn remove_user(
    map: &DashMap<PackedUser, (), Hasher>,
    count: &AtomicI64,
    markers: &Mutex<Markers>,
    id: &str,
) -> Applied {
    match map.entry(PackedUser::probe(id)) {
        Entry::Occupied(e) => {
            let mut mk = lock(markers);
            let (rec, ()) = e.remove_entry();
            mk.set(KeyKind::User, id, rec.version());
            drop(mk);
            count.fetch_sub(1, Ordering::Relaxed);
            Applied::Deleted
        }
        Entry::Vacant(_) => Applied::Absent,
    }
}

fn lock(markers: &Mutex<Markers>) -> MutexGuard<'_, Markers> {
    // A poisoned lock only means a panic elsewhere; the markers are plain
    // data, consistent between two calls.
    markers.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// An empty store, holding at most [`DEFAULT_DELETION_MARKERS_MAX`]
    /// deletion markers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same store, holding at most `max` deletion markers (the oldest
    /// are evicted beyond it; 0 keeps none).
    pub fn with_deletion_markers_max(self, max: usize) -> Self {
        let mut mk = lock(&self.markers);
        mk.max = max;
        drop(mk);
        self
    }

    /// An empty store with room for `users` and `orgs` records (a warm
    /// start knows how many are coming).
    pub fn with_capacity(users: usize, orgs: usize) -> Self {
        Store {
            users: DashMap::with_capacity_and_hasher(users, Hasher::default()),
            orgs: DashMap::with_capacity_and_hasher(orgs, Hasher::default()),
            ..Self::default()
        }
    }

    /// Apply a record, unless the store already has this or a newer
    /// version, or a tombstone deleted this or a newer version (its
    /// deletion marker is still held). A record newer than a marker clears
    /// it.
    pub fn apply(&self, rec: EligibilityRecord) -> Applied {
        let (users, orgs, mk) = (&self.users, &self.orgs, &self.markers);
        match rec {
            EligibilityRecord::User(u) => {
                upsert_user(users, &self.user_count, mk, PackedUser::pack(&u))
            }
            EligibilityRecord::Organization(o) => {
                let (id, v) = (o.id.clone(), o.version);
                let (count, kind) = (&self.org_count, KeyKind::Organization);
                upsert(orgs, count, mk, kind, &id, v, o, |r| r.version)
            }
        }
    }

    /// [`Store::apply`] for a user record already packed (a snapshot's).
    pub fn apply_packed(&self, user: PackedUser) -> Applied {
        upsert_user(&self.users, &self.user_count, &self.markers, user)
    }

    /// Apply a tombstone: remove the key, and keep a deletion marker with
    /// the version it had. A tombstone for an absent key changes nothing
    /// (a marker it has stays as it is).
    pub fn delete(&self, kind: KeyKind, id: &str) -> Applied {
        let mk = &self.markers;
        match kind {
            KeyKind::User => remove_user(&self.users, &self.user_count, mk, id),
            KeyKind::Organization => {
                remove(&self.orgs, &self.org_count, mk, kind, id, |r| r.version)
            }
        }
    }

    /// Restore a deletion marker (from a snapshot): `kind:id` was deleted at
    /// `version`. Returns false, and changes nothing, when the store holds a
    /// record of that key (a marker never coexists with a record).
    pub fn restore_marker(&self, kind: KeyKind, id: &str, version: u64) -> bool {
        let present = match kind {
            KeyKind::User => self.users.contains_key(id),
            KeyKind::Organization => self.orgs.contains_key(id),
        };
        if present {
            return false;
        }
        lock(&self.markers).set(kind, id, version);
        true
    }

    /// The version a tombstone deleted from `kind:id`, if its deletion
    /// marker is held.
    pub fn deletion_marker(&self, kind: KeyKind, id: &str) -> Option<u64> {
        lock(&self.markers).version(kind, id)
    }

    /// Every deletion marker, oldest first (for snapshots). Call it while
    /// no record is being applied for a view consistent with
    /// [`Store::shared_records`].
    pub fn deletion_markers(&self) -> Vec<DeletionMarker> {
        let mk = lock(&self.markers);
        mk.order
            .values()
            .map(|(kind, id)| {
                let map = match kind {
                    KeyKind::User => &mk.users,
                    KeyKind::Organization => &mk.orgs,
                };
                DeletionMarker {
                    kind: *kind,
                    id: Arc::clone(id),
                    version: map.get(&**id).map(|(v, _)| *v).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Number of deletion markers held.
    pub fn deletion_marker_count(&self) -> usize {
        lock(&self.markers).len()
    }

    /// The current record of a user, unpacked. A record that does not
    /// unpack (a bug: the store packed it) is counted, logged the first
    /// time in the process, and reported absent, so the request is decided
    /// as for an unknown subject (fail-closed for controlled models).
    pub fn user(&self, id: &str) -> Option<Arc<UserRecord>> {
        let unpacked = self.users.get(id)?.key().unpack();
        match unpacked {
            Ok(u) => Some(Arc::new(u)),
            Err(e) => {
                static LOGGED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "a user record of the cache is unreadable; deciding as unknown (further ones are only counted, clearance_eligibility_unreadable_total)");
                }
                metrics::counter!(m::CACHE_UNREADABLE_TOTAL).increment(1);
                None
            }
        }
    }

    /// The records a request is decided from: its subject's, and the
    /// organization's it names, or else its subject's organization.
    pub fn records_for(
        &self,
        req: &crate::event::AccessRequest,
    ) -> (Option<Arc<UserRecord>>, Option<Arc<OrgRecord>>) {
        let subject = self.user(&req.subject_id);
        let org_id = req
            .organization_id
            .as_deref()
            .or(subject.as_ref().and_then(|s| s.organization_id.as_deref()));
        let org = org_id.and_then(|id| self.organization(id));
        (subject, org)
    }

    /// The current record of an organization.
    pub fn organization(&self, id: &str) -> Option<Arc<OrgRecord>> {
        self.orgs.get(id).map(|r| Arc::clone(r.value()))
    }

    /// Every record, shared rather than copied (for snapshots): one `Arc`
    /// per record, users packed. Records applied while this runs may or may
    /// not be in it; call it while no record is being applied for a
    /// consistent view.
    pub fn shared_records(&self) -> (Vec<PackedUser>, Vec<Arc<OrgRecord>>) {
        let users = self.users.iter().map(|r| r.key().clone()).collect();
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
    fn a_record_that_does_not_unpack_is_looked_up_as_absent() {
        // Id "x", version 5, then a byte that is no `Option` tag: what a
        // packing bug would leave. Fail-closed: no record, never a panic.
        let broken = PackedUser::from_snapshot_bytes(vec![1, b'x', 5, 99]).unwrap();
        let s = Store::new();
        assert_eq!(s.apply_packed(broken), Applied::Inserted);
        assert_eq!(s.user_count(), 1);
        assert!(s.user("x").is_none());
        assert!(
            s.user("x").is_none(),
            "and again (logged once, counted each time)"
        );
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

    #[test]
    fn a_late_older_version_does_not_bring_a_deleted_key_back() {
        let s = Store::new();
        assert_eq!(
            s.apply(user("u", 7, UsPersonStatus::ForeignPerson)),
            Applied::Inserted
        );
        assert_eq!(s.delete(KeyKind::User, "u"), Applied::Deleted);
        assert_eq!(
            s.apply(user("u", 5, UsPersonStatus::Citizen)),
            Applied::Stale
        );
        assert!(s.user("u").is_none(), "the user stays deleted");
        assert_eq!(s.user_count(), 0);
        // The deleted version itself is stale too.
        assert_eq!(
            s.apply(user("u", 7, UsPersonStatus::Citizen)),
            Applied::Stale
        );
        assert!(s.user("u").is_none());
        // A second tombstone keeps the marker.
        assert_eq!(s.delete(KeyKind::User, "u"), Applied::Absent);
        assert_eq!(
            s.apply(user("u", 6, UsPersonStatus::Citizen)),
            Applied::Stale
        );
        assert!(s.user("u").is_none());
        // A newer version comes back, and clears the marker.
        assert_eq!(
            s.apply(user("u", 8, UsPersonStatus::Citizen)),
            Applied::Inserted
        );
        assert_eq!(s.user("u").unwrap().version, 8);
        assert_eq!(s.user_count(), 1);
    }

    #[test]
    fn the_bound_evicts_the_oldest_markers() {
        let s = Store::new().with_deletion_markers_max(2);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            s.apply(user(id, 10 + i as u64, UsPersonStatus::Citizen));
            assert_eq!(s.delete(KeyKind::User, id), Applied::Deleted);
        }
        assert_eq!(s.deletion_marker_count(), 2);
        assert_eq!(
            s.deletion_marker(KeyKind::User, "a"),
            None,
            "the oldest went"
        );
        assert_eq!(s.deletion_marker(KeyKind::User, "b"), Some(11));
        assert_eq!(s.deletion_marker(KeyKind::User, "c"), Some(12));
        // The documented consequence: a late older record of the evicted
        // key is applied again.
        assert_eq!(
            s.apply(user("a", 1, UsPersonStatus::Citizen)),
            Applied::Inserted
        );
        assert_eq!(
            s.apply(user("b", 1, UsPersonStatus::Citizen)),
            Applied::Stale
        );
        // A newer record clears its marker, which frees room: no eviction.
        assert_eq!(
            s.apply(user("b", 12, UsPersonStatus::Citizen)),
            Applied::Inserted
        );
        assert_eq!(s.deletion_marker_count(), 1);
        s.delete(KeyKind::User, "a");
        assert_eq!(
            s.deletion_markers()
                .iter()
                .map(|m| (m.id.to_string(), m.version))
                .collect::<Vec<_>>(),
            vec![("c".to_string(), 12), ("a".to_string(), 1)],
            "oldest first"
        );
    }

    #[test]
    fn a_tombstone_of_an_unknown_key_leaves_no_marker() {
        let s = Store::new();
        assert_eq!(s.delete(KeyKind::User, "nobody"), Applied::Absent);
        assert_eq!(s.deletion_marker_count(), 0);
        assert_eq!(
            s.apply(user("nobody", 1, UsPersonStatus::Citizen)),
            Applied::Inserted
        );
    }

    #[test]
    fn markers_are_per_kind() {
        let s = Store::new();
        s.apply(user("x", 7, UsPersonStatus::Citizen));
        s.delete(KeyKind::User, "x");
        let org = |v| {
            EligibilityRecord::Organization(OrgRecord {
                id: "x".into(),
                version: v,
                updated_at: None,
                name: None,
                headquarters: None,
                owners: vec![],
                screening_hits: vec![],
                authorizations: vec![],
            })
        };
        assert_eq!(
            s.apply(org(1)),
            Applied::Inserted,
            "user:x is not organization:x"
        );
        assert_eq!(s.delete(KeyKind::Organization, "x"), Applied::Deleted);
        assert_eq!(s.apply(org(1)), Applied::Stale);
        assert!(s.organization("x").is_none());
        assert_eq!(
            s.apply(user("x", 5, UsPersonStatus::Citizen)),
            Applied::Stale
        );
    }
}
