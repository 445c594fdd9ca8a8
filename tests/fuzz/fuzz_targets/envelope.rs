//! The envelope decoder and validator (`check_envelope`) on arbitrary
//! payloads, as published by the port gateway of the demo registry.
//!
//! Beyond "never panics": every reading is either accepted or rejected
//! (none vanishes), each accepted reading is registered to this gateway
//! with its kind, and what was accepted, encoded again the way an agent
//! encodes it, is accepted again unchanged.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pantau_model::envelope::encode;
use pantau_model::validate::check_envelope;
use pantau_model::{Envelope, Policy, Registry, Timestamp};

const GATEWAY: &str = "gw-pelabuhan";

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    Registry::parse(include_str!("../../../deploy/dumai-demo-registry.toml"))
        .expect("the demo registry parses")
});

fuzz_target!(|payload: &[u8]| {
    let now = Timestamp::parse_rfc3339("2026-11-28T06:00:00Z").expect("a valid time");
    let policy = Policy::default();
    let Ok(checked) = check_envelope(payload, GATEWAY, &*REGISTRY, now, &policy) else {
        return;
    };
    let decoded = Envelope::decode(payload).expect("an envelope that validated decodes");
    assert_eq!(
        checked.accepted.len() + checked.rejected.len(),
        decoded.readings.len(),
        "every reading is accepted or rejected"
    );
    assert_eq!(checked.accepted.len(), checked.kinds.len());
    for (reading, kind) in checked.accepted.iter().zip(&checked.kinds) {
        let sensor = REGISTRY
            .get(&reading.sensor)
            .expect("accepted sensors are registered");
        assert_eq!(sensor.gateway.as_str(), GATEWAY);
        assert_eq!(sensor.kind, *kind);
        assert!(!reading.values.is_empty());
    }
    let again = encode(GATEWAY, checked.seq, now, &checked.accepted);
    let rechecked = check_envelope(&again, GATEWAY, &*REGISTRY, now, &policy)
        .expect("re-encoded readings decode");
    assert!(rechecked.rejected.is_empty(), "{:?}", rechecked.rejected);
    assert_eq!(rechecked.accepted, checked.accepted);
    assert_eq!(rechecked.seq, checked.seq);
});
