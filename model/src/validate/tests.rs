//! Codec and validation tests, including hostile input and property tests.

use proptest::prelude::*;

use super::*;
use crate::envelope::{encode, Reading, Value};
use crate::registry::Registry;

const NOW: &str = "2026-11-28T06:10:00Z";

fn registry() -> Registry {
    Registry::parse(
        r#"
[[sensor]]
id = "fl-a"
kind = "flood_gauge"
gateway = "gw-a"
name = "A"
lat = 1.0
lon = 101.0
thresholds = { siaga3 = 150, siaga2 = 200, siaga1 = 250 }
[[sensor]]
id = "br-a"
kind = "berth"
gateway = "gw-a"
name = "Berth"
lat = 1.0
lon = 101.0
[[sensor]]
id = "tr-a"
kind = "traffic_counter"
gateway = "gw-a"
name = "Road"
lat = 1.0
lon = 101.0
[[sensor]]
id = "fl-b"
kind = "flood_gauge"
gateway = "gw-b"
name = "B"
lat = 1.0
lon = 101.0
"#,
    )
    .unwrap()
}

fn now() -> Timestamp {
    Timestamp::parse_rfc3339(NOW).unwrap()
}

fn check(payload: &str) -> Result<Checked, EnvelopeError> {
    check_envelope(
        payload.as_bytes(),
        "gw-a",
        &registry(),
        now(),
        &Policy::default(),
    )
}

fn env(readings: &str) -> String {
    format!(r#"{{"v":1,"gw":"gw-a","seq":7,"sent":"{NOW}","readings":[{readings}]}}"#)
}

#[test]
fn accepts_a_good_envelope() {
    let c = check(&env(
        r#"{"sensor":"fl-a","ts":"2026-11-28T06:10:00Z","values":{"water_level_cm":143.2,"rain_mm":0.4}},
           {"sensor":"br-a","ts":"2026-11-28T06:09:00Z","values":{"occupied":true,"vessels_waiting":2}}"#,
    ))
    .unwrap();
    assert_eq!(c.seq, 7);
    assert!(c.rejected.is_empty(), "{:?}", c.rejected);
    assert_eq!(c.accepted.len(), 2);
    assert_eq!(c.accepted[0].values["water_level_cm"], Value::Num(143.2));
    assert_eq!(c.accepted[1].values["occupied"], Value::Bool(true));
    // Each accepted reading comes with its registered kind, by position.
    assert_eq!(
        c.kinds,
        vec![crate::SensorKind::FloodGauge, crate::SensorKind::Berth]
    );
}

#[test]
fn keeps_good_readings_and_reports_each_bad_one() {
    let c = check(&env(
        r#"{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{"water_level_cm":100}},
           {"sensor":"fl-a","ts":"2026-11-28T06:01:00Z","values":{"water_level_cm":99999}},
           {"sensor":"fl-a","ts":"2026-11-28T06:02:00Z","values":{"water_level_cm":101}},
           {"sensor":"fl-b","ts":"2026-11-28T06:03:00Z","values":{"water_level_cm":1}},
           {"sensor":"tr-a","ts":"2026-11-28T06:04:00Z","values":{"count_total":12.5}},
           {"sensor":"nope","ts":"2026-11-28T06:04:00Z","values":{"x":1}},
           {"sensor":"fl-a","ts":"2030-01-01T00:00:00Z","values":{"water_level_cm":1}},
           {"sensor":"fl-a","ts":"2026-11-28T06:05:00Z","values":{"colour":1}},
           {"sensor":"fl-a","ts":"2026-11-28T06:05:00Z","values":{"water_level_cm":"high"}},
           {"sensor":"fl-a","ts":"not a time","values":{"water_level_cm":1}},
           {"sensor":"fl-a","ts":"2026-11-28T06:05:00Z","values":{}},
           [1,2,3],
           {"sensor":"fl-a","ts":"2026-11-28T06:06:00Z","values":{"water_level_cm":102}}"#,
    ))
    .unwrap();
    let kept: Vec<f64> = c
        .accepted
        .iter()
        .map(|r| r.values["water_level_cm"].as_f64())
        .collect();
    assert_eq!(kept, vec![100.0, 101.0, 102.0]);
    let codes: Vec<(usize, &str)> = c
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.code()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, "out_of_range"),
            (3, "sensor_of_other_gateway"),
            (4, "not_integer"),
            (5, "unknown_sensor"),
            (6, "future_timestamp"),
            (7, "unknown_field"),
            (8, "wrong_type"),
            (9, "bad_timestamp"),
            (10, "no_values"),
            (11, "malformed_reading"),
        ]
    );
    let r = &c.rejected[0];
    assert_eq!(r.sensor.as_deref(), Some("fl-a"));
    assert_eq!(r.field.as_deref(), Some("water_level_cm"));
    assert_eq!(r.value.as_deref(), Some("99999"));
    assert!(r.to_string().contains("outside the valid range"));
}

/// Time to check `payload`, the fastest of a few runs.
fn check_time(payload: &str) -> std::time::Duration {
    (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            let _ = check(payload);
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// A reading whose values object has `keys` distinct keys.
fn many_keys(keys: usize) -> String {
    let values: Vec<String> = (0..keys).map(|i| format!(r#""k{i:05}":1"#)).collect();
    format!(
        r#"{{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{{{}}}}}"#,
        values.join(",")
    )
}

#[test]
fn a_reading_with_thousands_of_keys_is_refused_in_linear_time() {
    // 30 000 keys, about 256 KiB: refused as malformed...
    let hostile = env(&many_keys(30_000));
    assert!(hostile.len() > 250_000, "{}", hostile.len());
    let c = check(&hostile).unwrap();
    assert_eq!(c.rejected.len(), 1);
    assert!(
        c.rejected[0].to_string().contains("more than"),
        "{}",
        c.rejected[0]
    );
    // ...within 10 ms, and at no more per byte than parsing a benign
    // envelope of the same size (many ordinary readings).
    let took = check_time(&hostile);
    assert!(took < std::time::Duration::from_millis(10), "{took:?}");
    let one = r#"{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{"water_level_cm":1}}"#;
    let benign = env(&vec![one; hostile.len() / one.len()].join(","));
    let per_byte = |d: std::time::Duration, n: usize| d.as_nanos() as f64 / n as f64;
    assert!(
        per_byte(took, hostile.len()) <= 2.0 * per_byte(check_time(&benign), benign.len()),
        "hostile {took:?} for {} bytes vs benign {:?} for {} bytes",
        hostile.len(),
        check_time(&benign),
        benign.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Hostile shapes (many keys, repeated keys, deep nesting, long
    /// strings) never cost more per byte than benign input of their size.
    #[test]
    fn hostile_shapes_cost_no_more_per_byte_than_benign_input(
        keys in 1usize..20_000,
        depth in 1usize..100,
        long in 1usize..100_000,
        shape in 0u8..3,
    ) {
        let reading = match shape {
            0 => many_keys(keys),
            1 => format!(
                r#"{{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{{"water_level_cm":{}1{}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            ),
            _ => format!(
                r#"{{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{{"water_level_cm":"{}"}}}}"#,
                "x".repeat(long)
            ),
        };
        let hostile = env(&reading);
        let one = r#"{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{"water_level_cm":1}}"#;
        let benign = env(&vec![one; (hostile.len() / one.len()).max(1)].join(","));
        let per_byte = |d: std::time::Duration, n: usize| d.as_nanos() as f64 / n as f64;
        let (h, b) = (check_time(&hostile), check_time(&benign));
        // Small inputs are all overhead: compare from 2 µs up.
        let h = h.max(std::time::Duration::from_micros(2));
        let b = b.max(std::time::Duration::from_micros(2));
        prop_assert!(
            per_byte(h, hostile.len()) <= 3.0 * per_byte(b, benign.len()),
            "shape {} ({} bytes) {:?} vs benign ({} bytes) {:?}",
            shape, hostile.len(), h, benign.len(), b
        );
    }
}

#[test]
fn rejects_duplicated_keys() {
    let c = check(&env(
        r#"{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{"water_level_cm":1,"water_level_cm":2}}"#,
    ))
    .unwrap();
    assert_eq!(c.rejected[0].reason.code(), "malformed_reading");
    let c = check(&env(
        r#"{"sensor":"fl-a","sensor":"fl-b","ts":"2026-11-28T06:00:00Z","values":{"water_level_cm":1}}"#,
    ))
    .unwrap();
    assert_eq!(c.rejected.len(), 1);
    assert!(matches!(
        check(r#"{"v":1,"v":1,"gw":"gw-a","seq":1,"readings":[]}"#),
        Err(EnvelopeError::Malformed(_))
    ));
}

#[test]
fn rejects_hostile_envelopes_cleanly() {
    assert_eq!(
        check_envelope(
            b"\xff\xfe{}",
            "gw-a",
            &registry(),
            now(),
            &Policy::default()
        ),
        Err(EnvelopeError::NotUtf8)
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(check(&deep), Err(EnvelopeError::Malformed(_))));
    let deep_reading = env(&format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)));
    match check(&deep_reading) {
        Err(EnvelopeError::Malformed(_)) => {}
        Ok(c) => {
            assert!(c.accepted.is_empty());
            assert_eq!(c.rejected[0].reason.code(), "malformed_reading");
        }
        Err(e) => panic!("unexpected {e}"),
    }
    for bad in ["NaN", "Infinity", "-Infinity", "1e400"] {
        let c = check(&env(&format!(
            r#"{{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{{"water_level_cm":{bad}}}}}"#
        )));
        // Not JSON at all (NaN) fails the envelope; a number too large for
        // f64 fails the envelope too. Neither panics nor stores anything.
        assert!(c.is_err() || c.unwrap().accepted.is_empty(), "{bad}");
    }
    let huge = env(
        r#"{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{"water_level_cm":123456789012345678901234567890}}"#,
    );
    assert_eq!(
        check(&huge).unwrap().rejected[0].reason.code(),
        "out_of_range"
    );
    assert!(matches!(check(""), Err(EnvelopeError::Malformed(_))));
    assert!(matches!(check("null"), Err(EnvelopeError::Malformed(_))));
    assert!(matches!(
        check(r#"{"v":2,"gw":"gw-a","seq":1,"readings":[]}"#),
        Err(EnvelopeError::Version(2))
    ));
    assert!(matches!(
        check(r#"{"v":1,"gw":"gw-b","seq":1,"readings":[]}"#),
        Err(EnvelopeError::WrongGateway { .. })
    ));
    assert!(matches!(
        check(r#"{"v":1,"gw":"gw-a","seq":-1,"readings":[]}"#),
        Err(EnvelopeError::Malformed(_))
    ));
}

#[test]
fn an_empty_envelope_is_valid_and_empty() {
    let c = check(&env("")).unwrap();
    assert!(c.accepted.is_empty() && c.rejected.is_empty());
}

#[test]
fn ten_thousand_readings_in_one_envelope() {
    let start = now().millis() - 10_000 * 1000;
    let readings: Vec<Reading> = (0..10_000)
        .map(|i| Reading {
            sensor: "fl-a".into(),
            ts: Timestamp(start + i * 1000),
            values: [("water_level_cm".to_string(), Value::Num(i as f64 / 10.0))].into(),
        })
        .collect();
    let payload = encode("gw-a", 1, now(), &readings);
    let c = check_envelope(&payload, "gw-a", &registry(), now(), &Policy::default()).unwrap();
    assert_eq!(c.accepted, readings);
}

fn arb_reading() -> impl Strategy<Value = Reading> {
    (
        0i64..(80 * 24 * 3600 * 1000),
        -1000.0f64..10_000.0,
        proptest::option::of(0.0f64..500.0),
    )
        .prop_map(|(age, level, rain)| {
            let mut values: crate::Values =
                [("water_level_cm".to_string(), Value::Num(level))].into();
            if let Some(r) = rain {
                values.insert("rain_mm".into(), Value::Num(r));
            }
            Reading {
                sensor: "fl-a".into(),
                ts: Timestamp(now().millis() - age),
                values,
            }
        })
}

proptest! {
    #[test]
    fn encode_then_check_round_trips(readings in proptest::collection::vec(arb_reading(), 0..50), seq in any::<u64>()) {
        let payload = encode("gw-a", seq, now(), &readings);
        let c = check_envelope(&payload, "gw-a", &registry(), now(), &Policy::default()).unwrap();
        prop_assert_eq!(c.seq, seq);
        prop_assert!(c.rejected.is_empty());
        prop_assert_eq!(c.accepted, readings);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_envelope(&bytes, "gw-a", &registry(), now(), &Policy::default());
    }

    #[test]
    fn every_reading_is_either_accepted_or_rejected(level in proptest::num::f64::ANY, flag in any::<bool>()) {
        let body = format!(
            r#"{{"sensor":"fl-a","ts":"2026-11-28T06:00:00Z","values":{{"water_level_cm":{}}}}},{{"sensor":"br-a","ts":"2026-11-28T06:00:00Z","values":{{"occupied":{}}}}}"#,
            serde_json::to_string(&level).unwrap(), flag);
        let c = check(&env(&body)).unwrap();
        prop_assert_eq!(c.accepted.len() + c.rejected.len(), 2);
        let in_range = level.is_finite() && (-1000.0..=10_000.0).contains(&level);
        prop_assert_eq!(c.accepted.iter().any(|r| r.sensor == "fl-a"), in_range);
    }
}
