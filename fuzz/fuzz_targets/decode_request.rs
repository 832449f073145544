//! Access requests from `access.requests`: any bytes must decode to a
//! request or an error, never a panic; a decoded request must survive a
//! round trip through its JSON form.
#![no_main]

use clearance::event::{decode_request, salvage_request_id, AccessRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let salvaged = salvage_request_id(data);
    let Ok(req) = decode_request(data) else {
        return;
    };
    // A valid request always yields its id to the salvage path too.
    assert_eq!(
        salvaged.as_deref(),
        Some(req.request_id.as_str()),
        "salvage_request_id disagrees with decode_request"
    );
    let json = serde_json::to_vec(&req).expect("a decoded request must serialize");
    let again = decode_request(&json).unwrap_or_else(|e| {
        panic!(
            "a re-encoded request must decode again: {e}\n  json: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        normalize(again, &req),
        req,
        "round trip changed the request; json: {}",
        String::from_utf8_lossy(&json)
    );
});

/// serde_json's default float parsing may be one ULP off, so
/// `geo.confidence` is compared with a tolerance; every other field exactly.
fn normalize(mut again: AccessRequest, orig: &AccessRequest) -> AccessRequest {
    let a = again.geo.as_mut().and_then(|g| g.confidence.as_mut());
    let b = orig.geo.as_ref().and_then(|g| g.confidence);
    if let (Some(a), Some(b)) = (a, b) {
        if (*a - b).abs() <= f64::EPSILON * b.abs().max(1.0) {
            *a = b;
        }
    }
    again
}
