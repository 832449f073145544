//! Change-feed records from `eligibility.changes`: a key and a value (or a
//! tombstone) must decode or fail cleanly, and the store must keep its
//! invariants when the record is applied.
//!
//! Input layout: byte 0 holds the flags and the key length: bit 7 set means
//! "null value" (a tombstone), bits 0-6 the key length (cut to what is
//! there); then the key, then the value.
#![no_main]

use clearance::eligibility::{Applied, Store};
use clearance::event::{decode_eligibility, parse_eligibility_key, EligibilityRecord, KeyKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let tombstone = head & 0x80 != 0;
    let key_len = usize::from(head & 0x7f).min(rest.len());
    let (key, value) = rest.split_at(key_len);

    let parsed_key = parse_eligibility_key(key);
    let store = Store::new();

    if let Ok(rec) = decode_eligibility(key, value) {
        // decode_eligibility checks the key against the document, so the key
        // parses, and as the same kind and id.
        let (kind, id) = parsed_key
            .as_ref()
            .unwrap_or_else(|e| panic!("decoded record under an unparsable key: {e}"));
        let (rec_kind, rec_id) = match &rec {
            EligibilityRecord::User(u) => (KeyKind::User, u.id.as_str()),
            EligibilityRecord::Organization(o) => (KeyKind::Organization, o.id.as_str()),
        };
        assert_eq!(
            (*kind, *id),
            (rec_kind, rec_id),
            "key and document disagree"
        );

        // The JSON form round-trips.
        let json = serde_json::to_vec(&rec).expect("a decoded record must serialize");
        let again = decode_eligibility(key, &json).unwrap_or_else(|e| {
            panic!(
                "a re-encoded record must decode again: {e}\n  json: {}",
                String::from_utf8_lossy(&json)
            )
        });
        assert_eq!(again.key(), rec.key());
        assert_eq!(again.version(), rec.version());

        // Store invariants: insert, then the same version is stale; the
        // record is readable; counts follow.
        assert_eq!(store.apply(rec.clone()), Applied::Inserted);
        assert_eq!(store.apply(rec.clone()), Applied::Stale);
        match (&rec, *kind) {
            (EligibilityRecord::User(u), KeyKind::User) => {
                let got = store.user(id).expect("an applied user is in the store");
                assert_eq!(got.version, u.version);
                assert_eq!(store.user_count(), 1);
            }
            (EligibilityRecord::Organization(o), KeyKind::Organization) => {
                let got = store
                    .organization(id)
                    .expect("an applied org is in the store");
                assert_eq!(got.version, o.version);
                assert_eq!(store.org_count(), 1);
            }
            _ => unreachable!("kinds were compared above"),
        }
        if let Some(newer) = rec.version().checked_add(1) {
            let mut next = rec.clone();
            match &mut next {
                EligibilityRecord::User(u) => u.version = newer,
                EligibilityRecord::Organization(o) => o.version = newer,
            }
            assert_eq!(store.apply(next), Applied::Updated);
            assert_eq!(store.apply(rec), Applied::Stale);
        }
    }

    if tombstone {
        // A null value: the feed deletes the key when it parses.
        if let Ok((kind, id)) = parsed_key {
            let had = match kind {
                KeyKind::User => store.user(id).is_some(),
                KeyKind::Organization => store.organization(id).is_some(),
            };
            let expected = if had {
                Applied::Deleted
            } else {
                Applied::Absent
            };
            assert_eq!(store.delete(kind, id), expected);
            assert_eq!(store.delete(kind, id), Applied::Absent);
            assert_eq!(store.user_count(), 0);
            assert_eq!(store.org_count(), 0);
        }
    }
});
