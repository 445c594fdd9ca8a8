//! The gatekeeper's MQTT 3.1.1 reader (fixed-header checks, the PUBLISH
//! QoS and packet id it reads from the raw frame, rumqttd's codec) on
//! arbitrary bytes.
//!
//! Beyond "never panics or stalls": what the reader makes of a byte stream
//! may not depend on how TCP split it — a few arbitrary splits and one
//! byte at a time must give the packets (and the ending error) of the
//! whole input read at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pantau_broker::fuzzing::frames;

/// Small enough that the size limit is reached by short inputs too.
const MAX_PACKET: usize = 512;

fuzz_target!(|data: &[u8]| {
    // First byte: how many split points follow (0..=7), one byte each.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (splits, input) = rest.split_at(n);
    let pieces: Vec<usize> = splits.iter().map(|&b| usize::from(b)).collect();
    let whole = frames(input, &[], MAX_PACKET);
    assert_eq!(
        frames(input, &pieces, MAX_PACKET),
        whole,
        "split at {pieces:?}"
    );
    if input.len() <= 2048 {
        let bytewise = vec![1; input.len()];
        assert_eq!(
            frames(input, &bytewise, MAX_PACKET),
            whole,
            "one byte at a time"
        );
    }
});
