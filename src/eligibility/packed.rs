//! A user record packed into one shared allocation: the form the store
//! keeps users in.
//!
//! A [`UserRecord`] as decoded from the change feed is a tree of small heap
//! allocations (the record, its id, each citizenship and residency and
//! their strings): about 400 bytes of RSS per user. Packed, it is one
//! `Arc<[u8]>`: bincode with variable-length integers of the id, the
//! version, then every other field, timestamps as (Unix seconds,
//! nanoseconds, UTC offset in seconds). The id and the version are read
//! straight from the bytes (the map's key and the staleness check); the
//! rest is decoded on lookup ([`PackedUser::unpack`]).
//!
//! The form is lossless: unpacking gives back the record that was packed,
//! field for field, offsets included (tested over arbitrary records). The
//! conversions destructure the record whole, so a field added to
//! [`UserRecord`] does not compile until it is added here too. The bytes
//! leave the process only in snapshots, whose header carries this build's
//! [`layout_fingerprint`]: a snapshot packed otherwise is not read.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bincode::Options;
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use crate::event::{
    Citizenship, PermanentResidency, Relationship, ResidencyStatus, Revocation, UsPersonStatus,
    UserRecord, Verification, VerificationStatus,
};

/// A user record in one shared allocation, hashed and compared by its id
/// (so that a map of them is looked up by `&str`).
#[derive(Clone)]
pub struct PackedUser(Arc<[u8]>);

/// Why packed bytes could not be unpacked: a bug (the bytes were written by
/// [`PackedUser::pack`]), never a property of the input.
#[derive(Debug, thiserror::Error)]
#[error("a packed user record does not decode: {0}")]
pub struct UnpackError(String);

fn codec() -> impl Options {
    // Variable-length integers (the default), little-endian, no limit:
    // the bytes are our own.
    bincode::DefaultOptions::new()
}

/// A timestamp as (Unix seconds, nanoseconds, UTC offset in seconds):
/// about 7-11 bytes in varint form, against 17 for `time`'s own tuple.
#[derive(Serialize, Deserialize)]
struct Ts(i64, u32, i32);

impl From<&OffsetDateTime> for Ts {
    fn from(t: &OffsetDateTime) -> Self {
        Ts(
            t.unix_timestamp(),
            t.nanosecond(),
            t.offset().whole_seconds(),
        )
    }
}

impl Ts {
    fn to_time(&self) -> Result<OffsetDateTime, UnpackError> {
        let bad = |e: &dyn std::fmt::Display| UnpackError(format!("timestamp: {e}"));
        let utc = OffsetDateTime::from_unix_timestamp(self.0)
            .map_err(|e| bad(&e))?
            .replace_nanosecond(self.1)
            .map_err(|e| bad(&e))?;
        let offset = UtcOffset::from_whole_seconds(self.2).map_err(|e| bad(&e))?;
        utc.checked_to_offset(offset)
            .ok_or_else(|| bad(&"out of range in its offset"))
    }
}

fn ts(t: &Option<OffsetDateTime>) -> Option<Ts> {
    t.as_ref().map(Ts::from)
}

fn time_of(t: Option<Ts>) -> Result<Option<OffsetDateTime>, UnpackError> {
    t.map(|t| t.to_time()).transpose()
}

/// The packed layout, borrowing from the record (packing).
#[derive(Serialize)]
struct Ref<'a> {
    id: &'a str,
    version: u64,
    updated_at: Option<Ts>,
    us_person_status: UsPersonStatus,
    citizenships: Vec<(&'a str, Option<&'a str>)>,
    permanent_residencies: Vec<(&'a str, ResidencyStatus, Option<&'a str>)>,
    organization_id: Option<&'a str>,
    relationship: Option<Relationship>,
    verification: Option<(VerificationStatus, Option<Ts>, Option<Ts>)>,
    revocation: Option<(Ts, Option<&'a str>)>,
}

/// The packed layout, owned (unpacking). Same fields, same order as
/// [`Ref`].
#[derive(Deserialize)]
struct Owned {
    id: String,
    version: u64,
    updated_at: Option<Ts>,
    us_person_status: UsPersonStatus,
    citizenships: Vec<(String, Option<String>)>,
    permanent_residencies: Vec<(String, ResidencyStatus, Option<String>)>,
    organization_id: Option<String>,
    relationship: Option<Relationship>,
    verification: Option<(VerificationStatus, Option<Ts>, Option<Ts>)>,
    revocation: Option<(Ts, Option<String>)>,
}

/// A bincode varint at the start of `b`: its value and its length.
fn varint(b: &[u8]) -> (u64, usize) {
    let fixed = |n: usize| -> (u64, usize) {
        let mut v = [0u8; 8];
        if let Some(src) = b.get(1..1 + n) {
            v[..n].copy_from_slice(src);
        }
        (u64::from_le_bytes(v), 1 + n)
    };
    match b.first() {
        Some(&x) if x < 251 => (u64::from(x), 1),
        Some(251) => fixed(2),
        Some(252) => fixed(4),
        Some(253) => fixed(8),
        _ => (0, 1),
    }
}

impl PackedUser {
    /// Pack a record.
    pub fn pack(u: &UserRecord) -> PackedUser {
        let UserRecord {
            id,
            version,
            updated_at,
            us_person_status,
            citizenships,
            permanent_residencies,
            organization_id,
            relationship,
            verification,
            revocation,
        } = u;
        let r = Ref {
            id,
            version: *version,
            updated_at: ts(updated_at),
            us_person_status: *us_person_status,
            citizenships: citizenships
                .iter()
                .map(
                    |Citizenship {
                         country,
                         acquired_on,
                     }| (country.as_str(), acquired_on.as_deref()),
                )
                .collect(),
            permanent_residencies: permanent_residencies
                .iter()
                .map(
                    |PermanentResidency {
                         country,
                         status,
                         acquired_on,
                     }| (country.as_str(), *status, acquired_on.as_deref()),
                )
                .collect(),
            organization_id: organization_id.as_deref(),
            relationship: *relationship,
            verification: verification.as_ref().map(
                |Verification {
                     status,
                     verified_at,
                     expires_at,
                 }| (*status, ts(verified_at), ts(expires_at)),
            ),
            revocation: revocation
                .as_ref()
                .map(|Revocation { revoked_at, reason }| (Ts::from(revoked_at), reason.as_deref())),
        };
        // Serializing plain data into a Vec cannot fail (no limit, no
        // map with non-string keys); an empty record would only fail to
        // unpack, never crash.
        let bytes = codec().serialize(&r).unwrap_or_default();
        PackedUser(Arc::from(bytes))
    }

    /// A key-only value, to look a user up or delete one by id through
    /// the map's entry API (its version is 0; it is never stored).
    pub(crate) fn probe(id: &str) -> PackedUser {
        let mut bytes = Vec::with_capacity(id.len() + 10);
        // The same prefix as a packed record: the id, then version 0.
        bytes.extend(codec().serialize(id).unwrap_or_default());
        bytes.push(0);
        PackedUser(Arc::from(bytes))
    }

    /// The id (the request's `subject_id`).
    pub fn id(&self) -> &str {
        let (len, at) = varint(&self.0);
        let end = at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        // The bytes start with a `&str` of ours: always valid UTF-8.
        self.0
            .get(at..end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// The record's version.
    pub fn version(&self) -> u64 {
        let (len, at) = varint(&self.0);
        let end = at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        self.0.get(end..).map_or(0, |b| varint(b).0)
    }

    /// Packed bytes read back from a snapshot. Checked cheaply: the id
    /// (length within the bytes, UTF-8, not empty) and the version must
    /// read. The rest is not decoded here: the snapshot's checksum
    /// guarantees these are the bytes that were written, and its
    /// [`layout_fingerprint`] that this build packs the same way; a record
    /// that still does not unpack is decided as an unknown subject, and
    /// counted ([`crate::eligibility::Store::user`]).
    pub fn from_snapshot_bytes(bytes: Vec<u8>) -> Result<PackedUser, UnpackError> {
        let (len, at) = varint(&bytes);
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|end| *end < bytes.len())
            .ok_or_else(|| UnpackError("the id runs past the record".into()))?;
        let id = std::str::from_utf8(&bytes[at..end])
            .map_err(|e| UnpackError(format!("the id is not UTF-8: {e}")))?;
        if id.is_empty() {
            return Err(UnpackError("an empty id".into()));
        }
        let (_, n) = varint(&bytes[end..]);
        if end + n > bytes.len() {
            return Err(UnpackError("the version runs past the record".into()));
        }
        Ok(PackedUser(Arc::from(bytes)))
    }

    /// The packed bytes (for a snapshot; [`PackedUser::from_bytes`] reads
    /// them back).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes of the packed form (without the `Arc`'s two counters).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the packed form is empty (never, for a packed record).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The record, decoded.
    pub fn unpack(&self) -> Result<UserRecord, UnpackError> {
        let o: Owned = codec()
            .deserialize(&self.0)
            .map_err(|e| UnpackError(e.to_string()))?;
        Ok(UserRecord {
            id: o.id,
            version: o.version,
            updated_at: time_of(o.updated_at)?,
            us_person_status: o.us_person_status,
            citizenships: o
                .citizenships
                .into_iter()
                .map(|(country, acquired_on)| Citizenship {
                    country,
                    acquired_on,
                })
                .collect(),
            permanent_residencies: o
                .permanent_residencies
                .into_iter()
                .map(|(country, status, acquired_on)| PermanentResidency {
                    country,
                    status,
                    acquired_on,
                })
                .collect(),
            organization_id: o.organization_id,
            relationship: o.relationship,
            verification: o
                .verification
                .map(|(status, verified_at, expires_at)| {
                    Ok::<_, UnpackError>(Verification {
                        status,
                        verified_at: time_of(verified_at)?,
                        expires_at: time_of(expires_at)?,
                    })
                })
                .transpose()?,
            revocation: o
                .revocation
                .map(|(revoked_at, reason)| {
                    Ok::<_, UnpackError>(Revocation {
                        revoked_at: revoked_at.to_time()?,
                        reason,
                    })
                })
                .transpose()?,
        })
    }
}

/// The packed bytes of a fixed record with every field set: a snapshot
/// carries them, and one whose fingerprint differs from this build's was
/// written with another layout and is not read (a full bootstrap instead).
pub fn layout_fingerprint() -> Vec<u8> {
    use time::macros::datetime;
    let every_field = UserRecord {
        id: "u-layout".into(),
        version: 300,
        updated_at: Some(datetime!(2026-11-01 12:00:00.123456789 +02:00)),
        us_person_status: UsPersonStatus::ProtectedIndividual,
        citizenships: vec![Citizenship {
            country: "FR".into(),
            acquired_on: Some("1990-01-02".into()),
        }],
        permanent_residencies: vec![PermanentResidency {
            country: "US".into(),
            status: ResidencyStatus::Revoked,
            acquired_on: Some("2020-05-05".into()),
        }],
        organization_id: Some("o".into()),
        relationship: Some(Relationship::Visitor),
        verification: Some(Verification {
            status: VerificationStatus::Expired,
            verified_at: Some(datetime!(2026-01-01 00:00 UTC)),
            expires_at: Some(datetime!(2027-01-01 00:00 -05:00)),
        }),
        revocation: Some(Revocation {
            revoked_at: datetime!(2026-11-20 08:30 UTC),
            reason: Some("r".into()),
        }),
    };
    PackedUser::pack(&every_field).as_bytes().to_vec()
}

impl std::fmt::Debug for PackedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedUser")
            .field("id", &self.id())
            .field("version", &self.version())
            .field("bytes", &self.0.len())
            .finish()
    }
}

// Hashed and compared as its id, exactly as `str` is: `Borrow<str>` lets
// a map of packed users be looked up by `&str`.
impl Hash for PackedUser {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl PartialEq for PackedUser {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for PackedUser {}

impl Borrow<str> for PackedUser {
    fn borrow(&self) -> &str {
        self.id()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;

    /// Any timestamp RFC 3339 can carry (what the change feed parses):
    /// years 1 to 9999, offsets in whole minutes below 24 hours.
    fn time_strategy() -> impl Strategy<Value = OffsetDateTime> {
        (
            -62_000_000_000i64..250_000_000_000i64,
            0u32..1_000_000_000,
            -1_439i32..1_440,
        )
            .prop_filter_map("in range", |(s, n, minutes)| {
                let t = OffsetDateTime::from_unix_timestamp(s)
                    .ok()?
                    .replace_nanosecond(n)
                    .ok()?;
                t.checked_to_offset(UtcOffset::from_whole_seconds(minutes * 60).ok()?)
            })
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[A-Z]{2}", "\\PC{0,300}",]
    }

    prop_compose! {
        /// Any user record the change feed can carry.
        pub(crate) fn user()(
            id in "\\PC{0,300}",
            version in any::<u64>(),
            updated_at in proptest::option::of(time_strategy()),
            status in 0usize..5,
            citizenships in proptest::collection::vec((text(), proptest::option::of(text())), 0..4),
            residencies in proptest::collection::vec((text(), 0usize..3, proptest::option::of(text())), 0..3),
            organization_id in proptest::option::of(text()),
            relationship in proptest::option::of(0usize..4),
            verification in proptest::option::of((0usize..4, proptest::option::of(time_strategy()), proptest::option::of(time_strategy()))),
            revocation in proptest::option::of((time_strategy(), proptest::option::of(text()))),
        ) -> UserRecord {
            use UsPersonStatus as S;
            let statuses = [S::Citizen, S::LawfulPermanentResident, S::ProtectedIndividual, S::ForeignPerson, S::Unknown];
            let rels = [Relationship::Employee, Relationship::Contractor, Relationship::Visitor, Relationship::Other];
            let res = [ResidencyStatus::Granted, ResidencyStatus::Pending, ResidencyStatus::Revoked];
            let ver = [VerificationStatus::Verified, VerificationStatus::Pending, VerificationStatus::Failed, VerificationStatus::Expired];
            UserRecord {
                id,
                version,
                updated_at,
                us_person_status: statuses[status],
                citizenships: citizenships.into_iter().map(|(country, acquired_on)| Citizenship { country, acquired_on }).collect(),
                permanent_residencies: residencies.into_iter().map(|(country, s, acquired_on)| PermanentResidency { country, status: res[s], acquired_on }).collect(),
                organization_id,
                relationship: relationship.map(|r| rels[r]),
                verification: verification.map(|(s, verified_at, expires_at)| Verification { status: ver[s], verified_at, expires_at }),
                revocation: revocation.map(|(revoked_at, reason)| Revocation { revoked_at, reason }),
            }
        }
    }

    fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    proptest! {
        /// Lossless: the same record back, and the same JSON (which shows
        /// each timestamp in its own offset: `PartialEq` alone would only
        /// compare the instants).
        #[test]
        fn unpacking_gives_back_the_record_packed(u in user()) {
            let p = PackedUser::pack(&u);
            let back = p.unpack().expect("unpacks");
            prop_assert_eq!(&back, &u);
            prop_assert_eq!(
                serde_json::to_string(&back).unwrap(),
                serde_json::to_string(&u).unwrap()
            );
            prop_assert_eq!(p.id(), u.id.as_str());
            prop_assert_eq!(p.version(), u.version);
        }

        /// A packed user hashes and compares as its id, like the probe of
        /// that id: what a map keyed by it needs to be looked up by `&str`.
        #[test]
        fn a_packed_user_hashes_and_compares_as_its_id(u in user()) {
            let p = PackedUser::pack(&u);
            let probe = PackedUser::probe(&u.id);
            prop_assert_eq!(hash_of(&p), hash_of(u.id.as_str()));
            prop_assert_eq!(hash_of(&probe), hash_of(u.id.as_str()));
            prop_assert!(p == probe);
            prop_assert_eq!(probe.id(), u.id.as_str());
            prop_assert_eq!(probe.version(), 0);
        }
    }

    #[test]
    fn a_typical_user_packs_into_about_seventy_bytes() {
        let u = crate::loadgen::subject("", 3).record.expect("a record");
        let p = PackedUser::pack(&u);
        assert_eq!(p.unpack().unwrap(), u);
        // The layout is compact: a few bytes per field (the exact size is
        // not a contract; this guards against a regression to fixed-width
        // integers or `time`'s 9-field tuple, about twice as large).
        assert!(p.len() < 96, "{} bytes", p.len());
    }

    #[test]
    fn snapshot_bytes_need_a_readable_id_and_version() {
        let good = PackedUser::pack(&crate::loadgen::subject("", 3).record.unwrap());
        let back = PackedUser::from_snapshot_bytes(good.as_bytes().to_vec()).unwrap();
        assert_eq!(back.unpack().unwrap(), good.unpack().unwrap());
        for (bytes, why) in [
            (vec![], "the id runs past"),
            (vec![5, b'a'], "the id runs past"),
            (vec![2, b'a', b'b'], "the id runs past"),
            (vec![2, 0xff, 0xfe, 1], "not UTF-8"),
            (vec![0, 1], "an empty id"),
            (vec![1, b'a', 253, 1], "the version runs past"),
        ] {
            let e = PackedUser::from_snapshot_bytes(bytes.clone()).unwrap_err();
            assert!(e.to_string().contains(why), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn the_layout_fingerprint_unpacks_to_a_record_with_every_field() {
        let p = PackedUser(Arc::from(layout_fingerprint()));
        let u = p.unpack().unwrap();
        assert!(u.updated_at.is_some() && u.organization_id.is_some() && u.relationship.is_some());
        assert!(!u.citizenships.is_empty() && !u.permanent_residencies.is_empty());
        let v = u.verification.unwrap();
        assert!(v.verified_at.is_some() && v.expires_at.is_some());
        assert!(u.revocation.unwrap().reason.is_some());
        assert_eq!(layout_fingerprint(), layout_fingerprint(), "deterministic");
    }

    #[test]
    fn bytes_that_do_not_decode_are_an_error_not_a_panic() {
        let p = PackedUser(Arc::from(vec![3u8, b'a', b'b', b'c', 253]));
        assert_eq!(p.id(), "abc");
        assert!(p.unpack().is_err());
        let empty = PackedUser(Arc::from(Vec::new()));
        assert_eq!(empty.id(), "");
        assert_eq!(empty.version(), 0);
        assert!(empty.unpack().is_err());
    }
}
