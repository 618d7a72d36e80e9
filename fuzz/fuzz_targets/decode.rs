//! The event decoder on arbitrary bytes (issue 17): every input is either an `Event`
//! or a `Rejection`, never a panic; when the allocation-free scanner answers it agrees
//! with serde_json (the reference); an accepted event written back as JSON decodes to
//! itself.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=600

#![no_main]

use common::decode::{Limits, decode};
use common::event::{Event, TopicKind};
use libfuzzer_sys::fuzz_target;

/// A fixed clock inside the event-time limits of the seeds (2026-11-15 UTC).
const NOW_MS: i64 = 1_794_700_800_000;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Some(fast) = common::flat_json::parse(data) {
        let reference: Event<'_> =
            serde_json::from_slice(data).expect("serde_json accepts what the scanner accepts");
        assert_eq!(fast, reference, "the scanner and serde_json disagree");
    }
    for topic in [TopicKind::Traffic, TopicKind::Effects] {
        match decode(data, topic, NOW_MS, &limits) {
            Ok(event) => {
                let again = serde_json::to_vec(&event).expect("an event serialises");
                let back = decode(&again, topic, NOW_MS, &limits).expect("its JSON decodes");
                assert_eq!(back, event, "round trip");
            }
            Err(rejection) => assert!(!rejection.reason.as_str().is_empty()),
        }
    }
});
