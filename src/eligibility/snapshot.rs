//! Snapshots of the eligibility store, for a warm restart.
//!
//! File layout: the magic `CLRSNAP1`, a little-endian FNV-1a 64 checksum of
//! the body, then the body (bincode): a format version, the change-feed
//! positions the snapshot reflects, and every record as its change-feed JSON
//! document. Written to a temporary file, synced, then renamed over the old
//! one, so a crash never leaves a torn snapshot. A snapshot whose magic,
//! checksum, format or records do not check out is rejected as a whole.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Store;
use crate::event::EligibilityRecord;

const MAGIC: &[u8; 8] = b"CLRSNAP1";
const FORMAT: u32 = 1;

/// Why a snapshot could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot I/O on {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        message: String,
    },
    /// The file is not a valid snapshot (corrupted, truncated, or of
    /// another format): the engine does a full bootstrap instead.
    #[error("snapshot {path} rejected: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Body {
    format: u32,
    positions: BTreeMap<i32, i64>,
    records: Vec<Vec<u8>>,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a snapshot held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Records in it.
    pub records: usize,
    /// The change-feed positions it reflects.
    pub positions: BTreeMap<i32, i64>,
    /// File size in bytes.
    pub bytes: usize,
}

/// Write a snapshot of `store` at `positions` to `path`, atomically.
/// Call it only while no change-feed record is being applied (the feed
/// task does), so that the records and the positions agree.
pub fn write(
    path: &Path,
    store: &Store,
    positions: &BTreeMap<i32, i64>,
) -> Result<SnapshotInfo, SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let records: Vec<Vec<u8>> = store
        .records()
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap_or_default())
        .collect();
    let n = records.len();
    let body = bincode::serialize(&Body {
        format: FORMAT,
        positions: positions.clone(),
        records,
    })
    .map_err(|e| SnapshotError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&fnv1a64(&body).to_le_bytes()).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(SnapshotInfo {
        records: n,
        positions: positions.clone(),
        bytes: body.len() + 16,
    })
}

/// Load a snapshot into `store` (which should be empty). Nothing is
/// applied unless the whole snapshot checks out.
pub fn load(path: &Path, store: &Store) -> Result<SnapshotInfo, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|e| SnapshotError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(invalid("not a clearance snapshot (bad magic)".into()));
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[8..16]);
    let body = &bytes[16..];
    if u64::from_le_bytes(sum) != fnv1a64(body) {
        return Err(invalid("checksum mismatch (corrupted or truncated)".into()));
    }
    let body: Body = bincode::deserialize(body).map_err(|e| invalid(e.to_string()))?;
    if body.format != FORMAT {
        return Err(invalid(format!(
            "format {} is not the supported {FORMAT}",
            body.format
        )));
    }
    let mut recs = Vec::with_capacity(body.records.len());
    for (i, r) in body.records.iter().enumerate() {
        let rec: EligibilityRecord =
            serde_json::from_slice(r).map_err(|e| invalid(format!("record {i}: {e}")))?;
        recs.push(rec);
    }
    let n = recs.len();
    for r in recs {
        store.apply(r);
    }
    Ok(SnapshotInfo {
        records: n,
        positions: body.positions,
        bytes: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{OrgRecord, UsPersonStatus, UserRecord};

    fn store() -> Store {
        let s = Store::new();
        for i in 0..50 {
            s.apply(EligibilityRecord::User(UserRecord {
                id: format!("u{i}"),
                version: 3,
                updated_at: None,
                us_person_status: UsPersonStatus::Citizen,
                citizenships: vec![],
                permanent_residencies: vec![],
                organization_id: None,
                relationship: None,
                verification: None,
                revocation: None,
            }));
        }
        s.apply(EligibilityRecord::Organization(OrgRecord {
            id: "o".into(),
            version: 1,
            updated_at: None,
            name: None,
            headquarters: Some("SG".into()),
            owners: vec![],
            screening_hits: vec![],
            authorizations: vec![],
        }));
        s
    }

    #[test]
    fn round_trip_keeps_records_and_positions() {
        let dir = std::env::temp_dir().join(format!("clearance-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        let pos: BTreeMap<i32, i64> = [(0, 17), (1, 4)].into_iter().collect();
        let w = write(&path, &store(), &pos).unwrap();
        assert_eq!(w.records, 51);
        let s2 = Store::new();
        let r = load(&path, &s2).unwrap();
        assert_eq!(r.positions, pos);
        assert_eq!(s2.user_count(), 50);
        assert_eq!(s2.org_count(), 1);
        assert_eq!(s2.user("u7").unwrap().version, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corruption_is_rejected_and_nothing_applied() {
        let dir = std::env::temp_dir().join(format!("clearance-snap2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.bin");
        write(&path, &store(), &BTreeMap::new()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let s2 = Store::new();
        assert!(matches!(
            load(&path, &s2),
            Err(SnapshotError::Invalid { .. })
        ));
        assert_eq!(s2.user_count(), 0);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            load(&path, &s2),
            Err(SnapshotError::Invalid { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
