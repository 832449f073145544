//! Snapshots of the eligibility store, for a warm restart.
//!
//! File layout (format 4):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `CLRSNAP4` |
//! | 4 | CRC-32 (little-endian) of the body |
//! | 8 | body length in bytes (little-endian) |
//! | … | body |
//!
//! The body is a bincode stream: a `Header` (format, the change-feed
//! positions the snapshot reflects, the record and marker counts), then
//! every user record in the store's own packed form
//! ([`super::packed::PackedUser`]: a length, then its bytes, copied as they
//! are), then every organization record in a snapshot-only binary form
//! (`SnapOrg`: the change-feed types skip absent optional fields, which a
//! non-self-describing format cannot do), then every deletion marker,
//! oldest first (`SnapMarker`: kind, id, the version a tombstone deleted).
//!
//! Format 4 writes users packed: a warm start inserts them without
//! decoding them (it checks each id and version; the header carries the
//! packed form of a fixed record, and a snapshot packed in another layout
//! is rejected), and the file is smaller. Format 3 (users in a
//! bincode form of their own) and older snapshots are rejected as
//! incompatible, so the first start after an upgrade does a full
//! bootstrap, as it did from format 2 to 3 (format 2 knew nothing of the
//! deletions before its positions; the replay rebuilds the markers from
//! the tombstones still in the change feed).
//!
//! Writing streams the records through a buffered file writer: memory stays
//! at one `Arc` per record (collected in [`View`]) whatever the size of the
//! store. The file is written to a temporary name, synced, then renamed over
//! the old one, so a crash never leaves a torn snapshot.
//!
//! Loading verifies the magic, the length and the checksum over the whole
//! file before it decodes anything, then decodes every record before it
//! applies any: a snapshot whose magic, checksum, format or records do not
//! check out is rejected as a whole and the store stays untouched.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bincode::Options;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::packed::PackedUser;
use super::{DeletionMarker, Store};
use crate::event::{
    Authorization, CountryCode, EligibilityRecord, KeyKind, OrgRecord, Owner, OwnerKind,
    Relationship, ScreeningHit, ScreeningStatus,
};
use crate::metrics as m;

const MAGIC: &[u8; 8] = b"CLRSNAP4";
/// Earlier magics this engine recognises but does not read (format 2 has
/// no deletion markers, nor owner kinds; format 3 has users in another
/// form: a full bootstrap rebuilds them).
const OLD_MAGICS: [&[u8; 8]; 3] = [b"CLRSNAP1", b"CLRSNAP2", b"CLRSNAP3"];
const FORMAT: u32 = 4;
const PREAMBLE: usize = 8 + 4 + 8;
/// Upper bound for one decoded record: a corrupted length never makes the
/// decoder allocate more than this.
const MAX_RECORD_BYTES: u64 = 64 << 20;
const IO_BUFFER: usize = 1 << 20;

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

/// The first item of the body.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    /// [`super::packed::layout_fingerprint`] of the build that wrote it.
    layout: Vec<u8>,
    positions: BTreeMap<i32, i64>,
    users: u64,
    orgs: u64,
    markers: u64,
}

/// What a snapshot held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Records in it.
    pub records: usize,
    /// Deletion markers in it.
    pub markers: usize,
    /// The change-feed positions it reflects.
    pub positions: BTreeMap<i32, i64>,
    /// File size in bytes.
    pub bytes: u64,
}

/// A consistent view of the store to snapshot: the records (shared, not
/// copied), the deletion markers, and the change-feed positions they
/// reflect. Take it with
/// [`View::capture`] while no change-feed record is being applied (the feed
/// task does, between two polls); write it with [`View::write`], on any
/// thread, while the feed goes on.
#[derive(Debug)]
pub struct View {
    users: Vec<PackedUser>,
    orgs: Vec<Arc<OrgRecord>>,
    markers: Vec<DeletionMarker>,
    positions: BTreeMap<i32, i64>,
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_RECORD_BYTES)
}

/// A writer that keeps the CRC-32 and the length of what went through it.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl View {
    /// Capture the store's records, its deletion markers and the positions
    /// they reflect (all three from between the same two records).
    pub fn capture(store: &Store, positions: &BTreeMap<i32, i64>) -> Self {
        let (users, orgs) = store.shared_records();
        View {
            users,
            orgs,
            markers: store.deletion_markers(),
            positions: positions.clone(),
        }
    }

    /// Deletion markers in the view.
    pub fn markers(&self) -> usize {
        self.markers.len()
    }

    /// Records in the view.
    pub fn len(&self) -> usize {
        self.users.len() + self.orgs.len()
    }

    /// Whether the view holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write the view to `path`, atomically (temporary file, sync, rename).
    pub fn write(&self, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let tmp = temp_path(path);
        let result = self.write_to(&tmp, path);
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_to(&self, tmp: &Path, path: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let io = |e: std::io::Error| SnapshotError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let enc = |e: bincode::Error| SnapshotError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        // The records are personal data (citizenships, residencies):
        // readable by the engine's user only.
        let mut open = std::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let file = open.open(tmp).map_err(io)?;
        let mut out = BufWriter::with_capacity(IO_BUFFER, file);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&[0u8; 12]).map_err(io)?; // checksum and length, below
        let mut body = Summing {
            inner: out,
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        let header = Header {
            format: FORMAT,
            layout: super::packed::layout_fingerprint(),
            positions: self.positions.clone(),
            users: self.users.len() as u64,
            orgs: self.orgs.len() as u64,
            markers: self.markers.len() as u64,
        };
        codec().serialize_into(&mut body, &header).map_err(enc)?;
        for u in &self.users {
            // A length (fixed 8 bytes, as bincode writes one), then the
            // packed bytes as they are.
            body.write_all(&(u.len() as u64).to_le_bytes())
                .map_err(io)?;
            body.write_all(u.as_bytes()).map_err(io)?;
        }
        for o in &self.orgs {
            codec()
                .serialize_into(&mut body, &SnapOrg::from(&**o))
                .map_err(enc)?;
        }
        for mk in &self.markers {
            codec()
                .serialize_into(&mut body, &SnapMarkerRef::from(mk))
                .map_err(enc)?;
        }
        let Summing { inner, crc, len } = body;
        let mut file = inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(8)).map_err(io)?;
        file.write_all(&crc.finalize().to_le_bytes()).map_err(io)?;
        file.write_all(&len.to_le_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(tmp, path).map_err(io)?;
        Ok(SnapshotInfo {
            records: self.len(),
            markers: self.markers.len(),
            positions: self.positions.clone(),
            bytes: PREAMBLE as u64 + len,
        })
    }
}

/// A temporary file next to `path`, unique to this write: a write abandoned
/// at shutdown never shares its file with a later one.
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

/// Remove the temporary files that writes abandoned at shutdown (or cut
/// short by a kill) left next to `path`. Call it before any write starts.
pub fn remove_leftovers(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = name.to_os_string();
    prefix.push(".tmp-");
    let prefix = prefix.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed an abandoned snapshot file")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "could not remove an abandoned snapshot file")
                }
            }
        }
    }
}

/// Writes snapshots on a thread of their own, one at a time, so that the
/// change feed keeps applying records while a large snapshot is written.
#[derive(Debug)]
pub struct BackgroundWriter {
    path: PathBuf,
    running: Option<std::thread::JoinHandle<()>>,
}

fn write_logged(view: &View, path: &Path) {
    let started = std::time::Instant::now();
    match view.write(path) {
        Ok(info) => {
            let secs = started.elapsed().as_secs_f64();
            metrics::counter!(m::SNAPSHOT_WRITES_TOTAL, "outcome" => "ok").increment(1);
            metrics::gauge!(m::SNAPSHOT_WRITE_SECONDS).set(secs);
            tracing::info!(records = info.records, deletion_markers = info.markers, bytes = info.bytes, secs, path = %path.display(), "eligibility snapshot written");
        }
        Err(e) => {
            metrics::counter!(m::SNAPSHOT_WRITES_TOTAL, "outcome" => "error").increment(1);
            tracing::warn!(error = %e, "eligibility snapshot not written");
        }
    }
}

impl BackgroundWriter {
    /// A writer for snapshots at `path`.
    pub fn new(path: PathBuf) -> Self {
        BackgroundWriter {
            path,
            running: None,
        }
    }

    /// Whether a write is still running.
    pub fn busy(&self) -> bool {
        self.running.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Start writing `view` in the background. Returns false (and drops the
    /// view) when the previous write has not finished yet.
    pub fn start(&mut self, view: View) -> bool {
        if self.busy() {
            return false;
        }
        self.join();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("clearance-snapshot".into())
            .spawn(move || write_logged(&view, &path));
        match spawned {
            Ok(h) => {
                self.running = Some(h);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "eligibility snapshot: no thread to write it");
                false
            }
        }
    }

    /// At shutdown: let a running write finish, then write `view`, all
    /// within `within`. Returns whether the snapshot was written. Past the
    /// bound the write is abandoned (its thread is detached and dies with
    /// the process, leaving at most a temporary file): the previous
    /// snapshot stays in place, valid, and the engine exits on time.
    pub fn finish(&mut self, view: View, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let wait = |w: &Self| {
            while w.busy() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            !w.busy()
        };
        if !wait(self) || !self.start(view) || !wait(self) {
            tracing::warn!(
                bound_ms = within.as_millis() as u64,
                "eligibility snapshot not finished within the shutdown bound; the previous snapshot stays"
            );
            self.running = None; // detach
            return false;
        }
        self.join();
        true
    }

    fn join(&mut self) {
        if let Some(h) = self.running.take() {
            if h.join().is_err() {
                tracing::warn!("eligibility snapshot: the writer thread panicked");
            }
        }
    }
}

impl Drop for BackgroundWriter {
    /// A write in progress finishes (the process never exits halfway
    /// through one, though a torn temporary file would be harmless).
    fn drop(&mut self) {
        self.join();
    }
}

/// Write a snapshot of `store` at `positions` to `path`, atomically.
/// Call it only while no change-feed record is being applied, so that the
/// records and the positions agree (or capture a [`View`] then, and write
/// it later).
pub fn write(
    path: &Path,
    store: &Store,
    positions: &BTreeMap<i32, i64>,
) -> Result<SnapshotInfo, SnapshotError> {
    View::capture(store, positions).write(path)
}

/// Load a snapshot into a new store, sized for its records and holding at
/// most `markers_max` deletion markers (beyond it the oldest of the
/// snapshot's are evicted). Nothing comes out unless the whole snapshot
/// checks out: on any error the partly filled store is dropped.
///
/// The checksum is verified over the whole file before anything is decoded;
/// then this thread decodes the records while a second one applies them.
pub fn load(path: &Path, markers_max: usize) -> Result<(Store, SnapshotInfo), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut pre = [0u8; PREAMBLE];
    if size < PREAMBLE as u64 {
        return Err(invalid(format!(
            "too short to be a clearance snapshot ({size} bytes)"
        )));
    }
    file.read_exact(&mut pre).map_err(io)?;
    let magic: &[u8; 8] = pre[..8].try_into().expect("8 bytes");
    if magic != MAGIC {
        if OLD_MAGICS.contains(&magic) {
            return Err(invalid(format!(
                "incompatible format {} (this engine reads format {FORMAT})",
                String::from_utf8_lossy(magic)
            )));
        }
        return Err(invalid("not a clearance snapshot (bad magic)".into()));
    }
    let want_crc = u32::from_le_bytes(pre[8..12].try_into().expect("4 bytes"));
    let body_len = u64::from_le_bytes(pre[12..20].try_into().expect("8 bytes"));
    if body_len != size - PREAMBLE as u64 {
        return Err(invalid(format!(
            "body length {body_len} does not match the file ({} bytes after the header): truncated or corrupted",
            size - PREAMBLE as u64
        )));
    }

    // Pass 1: the checksum over the whole body, before decoding anything.
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; IO_BUFFER];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
    }
    if crc.finalize() != want_crc {
        return Err(invalid("checksum mismatch (corrupted or truncated)".into()));
    }

    // Pass 2: decode here, apply on a second thread, in batches.
    file.seek(SeekFrom::Start(PREAMBLE as u64)).map_err(io)?;
    let mut r = BufReader::with_capacity(IO_BUFFER, file);
    let header: Header = codec()
        .deserialize_from(&mut r)
        .map_err(|e| invalid(format!("header: {e}")))?;
    if header.format != FORMAT {
        return Err(invalid(format!(
            "format {} is not the supported {FORMAT}",
            header.format
        )));
    }
    if header.layout != super::packed::layout_fingerprint() {
        return Err(invalid(
            "users packed in another layout than this build's (incompatible format)".into(),
        ));
    }
    // Counts come from a checksummed header, but bound the pre-allocation
    // by what the file can hold anyway.
    let cap = |n: u64| usize::try_from(n).unwrap_or(0).min(size as usize / 16);
    let store = Store::with_capacity(cap(header.users), cap(header.orgs))
        .with_deletion_markers_max(markers_max);
    const BATCH: usize = 4096;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(8);
    let decoded = std::thread::scope(|scope| {
        // The records come first, then the markers (one channel: in order).
        let applier = scope.spawn(|| -> Result<(), String> {
            for batch in rx {
                for item in batch {
                    match item {
                        Item::User(user) => {
                            store.apply_packed(user);
                        }
                        Item::Record(rec) => {
                            store.apply(rec);
                        }
                        Item::Marker(kind, id, version) => {
                            if !store.restore_marker(kind, &id, version) {
                                return Err(format!(
                                    "deletion marker of {kind:?} {id:?} beside a record of that key"
                                ));
                            }
                        }
                    }
                }
            }
            Ok(())
        });
        let mut decode = || -> Result<(), SnapshotError> {
            let mut batch = Vec::with_capacity(BATCH);
            let mut push = |rec: Item| {
                batch.push(rec);
                if batch.len() == BATCH {
                    // The applier only stops when this sender is gone.
                    let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                }
            };
            for i in 0..header.users {
                let user = |e: &dyn std::fmt::Display| invalid(format!("user record {i}: {e}"));
                let mut len = [0u8; 8];
                r.read_exact(&mut len).map_err(|e| user(&e))?;
                let len = u64::from_le_bytes(len);
                if len > MAX_RECORD_BYTES {
                    return Err(user(&format!("length {len} beyond the bound")));
                }
                let mut bytes = vec![0u8; len as usize];
                r.read_exact(&mut bytes).map_err(|e| user(&e))?;
                // Checked here, on the reading thread: a record whose
                // id or version does not read rejects the snapshot.
                let packed = PackedUser::from_snapshot_bytes(bytes).map_err(|e| user(&e))?;
                push(Item::User(packed));
            }
            for i in 0..header.orgs {
                let o: SnapOrg = codec()
                    .deserialize_from(&mut r)
                    .map_err(|e| invalid(format!("organization record {i}: {e}")))?;
                push(Item::Record(EligibilityRecord::Organization(o.into())));
            }
            for i in 0..header.markers {
                let mk: SnapMarker = codec()
                    .deserialize_from(&mut r)
                    .map_err(|e| invalid(format!("deletion marker {i}: {e}")))?;
                let kind = match mk.kind {
                    0 => KeyKind::User,
                    1 => KeyKind::Organization,
                    k => return Err(invalid(format!("deletion marker {i}: kind {k}"))),
                };
                push(Item::Marker(kind, mk.id, mk.version));
            }
            let _ = tx.send(batch);
            if !r.fill_buf().map_err(io)?.is_empty() {
                return Err(invalid("bytes after the last record".into()));
            }
            Ok(())
        };
        let result = decode();
        drop(tx);
        // A decoding error comes first. (An applier that stops early drops
        // its receiver: the decoding goes on to the end, unsent.)
        match applier.join() {
            Err(_) => Err(invalid("the applying thread panicked".into())),
            Ok(applied) => result.and(applied.map_err(invalid)),
        }
    });
    decoded?;
    let records = usize::try_from(header.users + header.orgs).unwrap_or(usize::MAX);
    Ok((
        store,
        SnapshotInfo {
            records,
            markers: usize::try_from(header.markers).unwrap_or(usize::MAX),
            positions: header.positions,
            bytes: size,
        },
    ))
}

// ---------------------------------------------------------------------------
// Snapshot-only binary forms of the change-feed records. Every field is
// written (bincode is not self-describing, so the change-feed types'
// `skip_serializing_if` would not read back). The conversions destructure
// the records whole: a field added to a record type does not compile until
// it is added here too.
// ---------------------------------------------------------------------------

/// What the loading thread hands to the applying one.
enum Item {
    User(PackedUser),
    Record(EligibilityRecord),
    Marker(KeyKind, String, u64),
}

/// A deletion marker as written: kind (0 user, 1 organization), id, the
/// version a tombstone deleted.
#[derive(Serialize)]
struct SnapMarkerRef<'a> {
    kind: u8,
    id: &'a str,
    version: u64,
}

/// A deletion marker as read (same layout as [`SnapMarkerRef`]).
#[derive(Deserialize)]
struct SnapMarker {
    kind: u8,
    id: String,
    version: u64,
}

impl<'a> From<&'a DeletionMarker> for SnapMarkerRef<'a> {
    fn from(m: &'a DeletionMarker) -> Self {
        SnapMarkerRef {
            kind: match m.kind {
                KeyKind::User => 0,
                KeyKind::Organization => 1,
            },
            id: &m.id,
            version: m.version,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SnapAuthorization {
    id: String,
    legal_basis: Option<String>,
    model_tags: Vec<String>,
    nationalities: Vec<CountryCode>,
    subjects: Vec<String>,
    relationships: Vec<Relationship>,
    valid_from: Option<String>,
    valid_until: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct SnapOrg {
    id: String,
    version: u64,
    updated_at: Option<OffsetDateTime>,
    name: Option<String>,
    headquarters: Option<CountryCode>,
    owners: Vec<(String, Option<OwnerKind>, Option<CountryCode>, f64)>,
    screening_hits: Vec<(String, ScreeningStatus, Option<String>)>,
    authorizations: Vec<SnapAuthorization>,
}

impl From<&OrgRecord> for SnapOrg {
    fn from(o: &OrgRecord) -> Self {
        let OrgRecord {
            id,
            version,
            updated_at,
            name,
            headquarters,
            owners,
            screening_hits,
            authorizations,
        } = o;
        SnapOrg {
            id: id.clone(),
            version: *version,
            updated_at: *updated_at,
            name: name.clone(),
            headquarters: headquarters.clone(),
            owners: owners
                .iter()
                .map(
                    |Owner {
                         id,
                         kind,
                         headquarters,
                         percent,
                     }| (id.clone(), *kind, headquarters.clone(), *percent),
                )
                .collect(),
            screening_hits: screening_hits
                .iter()
                .map(
                    |ScreeningHit {
                         list,
                         status,
                         entry,
                     }| (list.clone(), *status, entry.clone()),
                )
                .collect(),
            authorizations: authorizations
                .iter()
                .map(
                    |Authorization {
                         id,
                         legal_basis,
                         model_tags,
                         nationalities,
                         subjects,
                         relationships,
                         valid_from,
                         valid_until,
                     }| SnapAuthorization {
                        id: id.clone(),
                        legal_basis: legal_basis.clone(),
                        model_tags: model_tags.clone(),
                        nationalities: nationalities.clone(),
                        subjects: subjects.clone(),
                        relationships: relationships.clone(),
                        valid_from: valid_from.clone(),
                        valid_until: valid_until.clone(),
                    },
                )
                .collect(),
        }
    }
}

impl From<SnapOrg> for OrgRecord {
    fn from(o: SnapOrg) -> Self {
        OrgRecord {
            id: o.id,
            version: o.version,
            updated_at: o.updated_at,
            name: o.name,
            headquarters: o.headquarters,
            owners: o
                .owners
                .into_iter()
                .map(|(id, kind, headquarters, percent)| Owner {
                    id,
                    kind,
                    headquarters,
                    percent,
                })
                .collect(),
            screening_hits: o
                .screening_hits
                .into_iter()
                .map(|(list, status, entry)| ScreeningHit {
                    list,
                    status,
                    entry,
                })
                .collect(),
            authorizations: o
                .authorizations
                .into_iter()
                .map(|a| Authorization {
                    id: a.id,
                    legal_basis: a.legal_basis,
                    model_tags: a.model_tags,
                    nationalities: a.nationalities,
                    subjects: a.subjects,
                    relationships: a.relationships,
                    valid_from: a.valid_from,
                    valid_until: a.valid_until,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eligibility::Applied;
    use crate::event::{
        Citizenship, PermanentResidency, ResidencyStatus, Revocation, UsPersonStatus, UserRecord,
        Verification, VerificationStatus,
    };
    use time::macros::datetime;

    /// A user with every optional field set, and one with none.
    fn full_user(i: usize) -> UserRecord {
        UserRecord {
            id: format!("u{i}"),
            version: 3,
            updated_at: Some(datetime!(2026-11-01 12:00:00.123456789 +02:00)),
            us_person_status: UsPersonStatus::ForeignPerson,
            citizenships: vec![
                Citizenship {
                    country: "FR".into(),
                    acquired_on: Some("1990-01-02".into()),
                },
                Citizenship {
                    country: "CN".into(),
                    acquired_on: None,
                },
            ],
            permanent_residencies: vec![PermanentResidency {
                country: "US".into(),
                status: ResidencyStatus::Pending,
                acquired_on: Some("2020-05-05".into()),
            }],
            organization_id: Some("o".into()),
            relationship: Some(Relationship::Contractor),
            verification: Some(Verification {
                status: VerificationStatus::Verified,
                verified_at: Some(datetime!(2026-01-01 00:00 UTC)),
                expires_at: None,
            }),
            revocation: Some(Revocation {
                revoked_at: datetime!(2026-11-20 08:30 UTC),
                reason: Some("directive 7".into()),
            }),
        }
    }

    fn bare_user(i: usize) -> UserRecord {
        crate::eligibility::tests::bare_user(&format!("b{i}"), 1, UsPersonStatus::Citizen)
    }

    fn full_org() -> OrgRecord {
        OrgRecord {
            id: "o".into(),
            version: 9,
            updated_at: Some(datetime!(2026-10-10 10:10:10 UTC)),
            name: Some("Org".into()),
            headquarters: Some("SG".into()),
            owners: vec![Owner {
                kind: Some(crate::event::OwnerKind::Organization),
                id: "parent".into(),
                headquarters: Some("CN".into()),
                percent: 50.5,
            }],
            screening_hits: vec![ScreeningHit {
                list: "entity_list".into(),
                status: ScreeningStatus::Potential,
                entry: None,
            }],
            authorizations: vec![Authorization {
                id: "L-1".into(),
                legal_basis: Some("EAR 734.13".into()),
                model_tags: vec!["frontier".into()],
                nationalities: vec!["CN".into()],
                subjects: vec!["u1".into()],
                relationships: vec![Relationship::Employee],
                valid_from: Some("2026-01-01".into()),
                valid_until: None,
            }],
        }
    }

    fn store() -> Store {
        let s = Store::new();
        for i in 0..50 {
            s.apply(EligibilityRecord::User(full_user(i)));
            s.apply(EligibilityRecord::User(bare_user(i)));
        }
        s.apply(EligibilityRecord::Organization(full_org()));
        s
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("clearance-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.snap")
    }

    #[test]
    fn round_trip_keeps_every_field_and_the_positions() {
        let path = temp("snap-rt");
        let pos: BTreeMap<i32, i64> = [(0, 17), (1, 4)].into_iter().collect();
        let w = write(&path, &store(), &pos).unwrap();
        assert_eq!(w.records, 101);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "owner-only: {mode:o}");
        }
        assert_eq!(w.bytes, std::fs::metadata(&path).unwrap().len());
        let (s2, r) = load(&path, 1000).unwrap();
        assert_eq!(r.positions, pos);
        assert_eq!(r.records, 101);
        assert_eq!((s2.user_count(), s2.org_count()), (100, 1));
        assert_eq!(*s2.user("u7").unwrap(), full_user(7));
        assert_eq!(*s2.user("b7").unwrap(), bare_user(7));
        assert_eq!(*s2.organization("o").unwrap(), full_org());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn deletion_markers_round_trip_in_order_and_keep_deleted_keys_deleted() {
        let path = temp("snap-markers");
        let s = store();
        // Deleted: u3 (version 3), the organization (9), then b5 (1).
        assert_eq!(s.delete(KeyKind::User, "u3"), Applied::Deleted);
        s.delete(KeyKind::Organization, "o");
        s.delete(KeyKind::User, "b5");
        let pos: BTreeMap<i32, i64> = [(0, 103)].into_iter().collect();
        let w = write(&path, &s, &pos).unwrap();
        assert_eq!((w.records, w.markers), (98, 3));
        let (s2, info) = load(&path, 1000).unwrap();
        assert_eq!((info.records, info.markers), (98, 3));
        assert_eq!(s2.deletion_markers(), s.deletion_markers(), "oldest first");
        assert_eq!(s2.deletion_marker(KeyKind::User, "u3"), Some(3));
        assert_eq!(s2.deletion_marker(KeyKind::Organization, "o"), Some(9));
        // After the restart, a late older record is still stale, a newer
        // one is applied.
        let late = |v| {
            let mut u = full_user(3);
            u.version = v;
            EligibilityRecord::User(u)
        };
        assert_eq!(s2.apply(late(2)), Applied::Stale);
        assert!(s2.user("u3").is_none());
        assert_eq!(s2.apply(late(4)), Applied::Inserted);
        assert_eq!(s2.deletion_marker_count(), 2);

        // A smaller bound at load keeps the newest markers.
        let (s3, _) = load(&path, 1).unwrap();
        assert_eq!(s3.deletion_marker_count(), 1);
        assert_eq!(s3.deletion_marker(KeyKind::User, "b5"), Some(1));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_marker_beside_a_record_of_its_key_is_rejected() {
        // A checksummed file that contradicts itself: a record of u1 and a
        // deletion marker of u1 (the store never holds both).
        let path = temp("snap-contradiction");
        let s = Store::new();
        s.apply(EligibilityRecord::User(full_user(1)));
        let mut view = View::capture(&s, &BTreeMap::new());
        view.markers.push(DeletionMarker {
            kind: KeyKind::User,
            id: "u1".into(),
            version: 1,
        });
        view.write(&path).unwrap();
        assert!(rejected(&path).contains("beside a record"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn an_empty_store_round_trips() {
        let path = temp("snap-empty");
        write(&path, &Store::new(), &BTreeMap::new()).unwrap();
        let (s2, info) = load(&path, 1000).unwrap();
        assert_eq!((info.records, s2.user_count(), s2.org_count()), (0, 0, 0));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    fn rejected(path: &Path) -> String {
        match load(path, 1000) {
            Err(SnapshotError::Invalid { reason, .. }) => reason,
            Err(e) => panic!("expected a rejection, got {e}"),
            Ok((_, info)) => panic!("expected a rejection, loaded {info:?}"),
        }
    }

    #[test]
    fn corrupted_truncated_foreign_and_old_snapshots_are_rejected() {
        let path = temp("snap-bad");
        write(&path, &store(), &BTreeMap::new()).unwrap();
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        assert!(rejected(&path).contains("checksum"));

        std::fs::write(&path, &good[..good.len() - 10]).unwrap();
        assert!(rejected(&path).contains("truncated"));

        let mut longer = good.clone();
        longer.extend_from_slice(b"tail");
        std::fs::write(&path, &longer).unwrap();
        assert!(rejected(&path).contains("does not match"));

        for magic in [b"CLRSNAP1", b"CLRSNAP2", b"CLRSNAP3"] {
            // Format 2 has no deletion markers, format 3 users in another
            // form: rejected, full bootstrap.
            let mut old = good.clone();
            old[..8].copy_from_slice(magic);
            std::fs::write(&path, &old).unwrap();
            assert!(rejected(&path).contains("incompatible format"));
        }

        std::fs::write(&path, b"garbage").unwrap();
        assert!(rejected(&path).contains("too short"));
        std::fs::write(&path, vec![7u8; 100]).unwrap();
        assert!(rejected(&path).contains("bad magic"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_record_that_does_not_decode_is_rejected_even_with_a_good_checksum() {
        // A well-formed file whose header promises more records than the
        // body holds: the checksum matches, the decoding does not.
        let path = temp("snap-count");
        write(&path, &store(), &BTreeMap::new()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // The header starts the body: format (4), the layout fingerprint
        // (length, 8, then its bytes), positions length (8, no entries),
        // then the user count.
        let users_at = PREAMBLE + 4 + 8 + super::super::packed::layout_fingerprint().len() + 8;
        bytes[users_at..users_at + 8].copy_from_slice(&1_000u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes[PREAMBLE..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(rejected(&path).contains("record"));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Rewrite byte `at` of a snapshot (and its checksum, so that only the
    /// decoding can object); returns what loading it says.
    fn rejected_with_byte(path: &Path, at: usize, byte: u8) -> String {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] = byte;
        let crc = crc32fast::hash(&bytes[PREAMBLE..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(path, &bytes).unwrap();
        rejected(path)
    }

    #[test]
    fn a_packed_user_whose_id_does_not_read_is_rejected_even_with_a_good_checksum() {
        let path = temp("snap-packed");
        let one = Store::new();
        one.apply(EligibilityRecord::User(bare_user(0)));
        write(&path, &one, &BTreeMap::new()).unwrap();
        // Header: format, fingerprint, positions, three counts; then the
        // user's length (8), its id's length (1) and the id, "b0".
        let fp = super::super::packed::layout_fingerprint().len();
        let id_at = PREAMBLE + 4 + (8 + fp) + 8 + 24 + 8 + 1;
        assert_eq!(&std::fs::read(&path).unwrap()[id_at..id_at + 2], b"b0");
        let why = rejected_with_byte(&path, id_at, 0xff);
        assert!(
            why.contains("user record 0") && why.contains("UTF-8"),
            "{why}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_snapshot_packed_in_another_layout_is_rejected() {
        let path = temp("snap-layout");
        write(&path, &store(), &BTreeMap::new()).unwrap();
        // The fingerprint's last byte: the revocation reason's "r".
        let fp = super::super::packed::layout_fingerprint().len();
        let last = PREAMBLE + 4 + 8 + fp - 1;
        assert_eq!(std::fs::read(&path).unwrap()[last], b'r');
        let why = rejected_with_byte(&path, last, b's');
        assert!(why.contains("another layout"), "{why}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_shutdown_write_is_whole_or_absent_never_torn() {
        let path = temp("snap-finish");
        let before = Store::new();
        before.apply(EligibilityRecord::User(bare_user(0)));
        write(&path, &before, &BTreeMap::new()).unwrap();

        let big = Store::new();
        for i in 0..20_000 {
            big.apply(EligibilityRecord::User(full_user(i)));
        }
        let pos: BTreeMap<i32, i64> = [(0, 20_000)].into_iter().collect();
        // No time at all: the write may or may not make it, but the file is
        // always one whole snapshot, the old or the new one.
        let mut w = BackgroundWriter::new(path.clone());
        let written = w.finish(View::capture(&big, &pos), std::time::Duration::ZERO);
        let (s, info) = load(&path, 1000).unwrap();
        if written {
            assert_eq!(info.records, 20_000);
        } else {
            assert!(info.records == 1 || info.records == 20_000, "{info:?}");
        }
        assert_eq!(s.user_count() as usize, info.records);
        drop(w);

        // Time enough: written, and it is the new one.
        let mut w = BackgroundWriter::new(path.clone());
        assert!(w.finish(
            View::capture(&big, &pos),
            std::time::Duration::from_secs(300)
        ));
        let (_, info) = load(&path, 1000).unwrap();
        assert_eq!((info.records, info.positions), (20_000, pos));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn leftovers_of_abandoned_writes_are_removed() {
        let path = temp("snap-leftover");
        let dir = path.parent().unwrap().to_path_buf();
        std::fs::write(dir.join("s.snap.tmp-1-0"), b"half").unwrap();
        std::fs::write(dir.join("other.tmp-1-0"), b"keep").unwrap();
        write(&path, &store(), &BTreeMap::new()).unwrap();
        remove_leftovers(&path);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["other.tmp-1-0", "s.snap"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
