//! Pantau's line-protocol writer, read back with InfluxData's own parser.
//!
//! A reading of any kind, with any district the registry admits (the
//! district is checked by the registry's own rule), any sensor and
//! gateway id and any finite values, must come back from the parser as
//! the same measurement, tags, typed fields and timestamp.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use influxdb_line_protocol::{parse_lines, FieldValue};
use libfuzzer_sys::fuzz_target;
use pantau_ingest::influx::line;
use pantau_ingest::log::LoggedReading;
use pantau_model::{
    FieldType, GatewayId, Sensor, SensorId, SensorKind, SensorSpec, Timestamp, Value,
};

fn reading(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<(LoggedReading, String)>> {
    let kind = *u.choose(&SensorKind::ALL)?;
    let sensor = String::arbitrary(u)?;
    let gateway = String::arbitrary(u)?;
    let district = String::arbitrary(u)?;
    if SensorId::new(&sensor).is_err() || GatewayId::new(&gateway).is_err() {
        return Ok(None);
    }
    // The district as the registry would admit it (it becomes a tag).
    let spec = SensorSpec {
        id: sensor.clone(),
        kind: SensorKind::FloodGauge.as_str().into(),
        gateway: gateway.clone(),
        name: "x".into(),
        district: district.clone(),
        lat: 1.0,
        lon: 101.0,
        owner: String::new(),
        public: false,
        thresholds: None,
        capacity_pcu_h: None,
    };
    if Sensor::from_spec(spec).is_err() {
        return Ok(None);
    }
    let mut values = std::collections::BTreeMap::new();
    for field in kind.fields() {
        if !bool::arbitrary(u)? {
            continue;
        }
        let value = match field.ty {
            FieldType::Bool => Value::Bool(bool::arbitrary(u)?),
            FieldType::Integer => Value::Num(i32::arbitrary(u)? as f64),
            FieldType::Float => Value::Num(f64::arbitrary(u)?),
        };
        if matches!(value, Value::Num(v) if !v.is_finite()) {
            continue;
        }
        values.insert(field.name.to_string(), value);
    }
    if values.is_empty() {
        return Ok(None);
    }
    let ts = Timestamp(u.int_in_range(0..=4_102_444_800_000i64)?);
    Ok(Some((
        LoggedReading {
            sensor,
            gateway,
            kind,
            ts,
            values,
        },
        district,
    )))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(Some((r, district))) = reading(&mut u) else {
        return;
    };
    let text = line(&r, &district);
    let parsed: Vec<_> = parse_lines(&text)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(parsed.len(), 1, "{text}");
    let p = &parsed[0];
    assert_eq!(p.series.measurement.as_str(), r.kind.as_str());
    let tags: Vec<(String, String)> = p
        .series
        .tag_set
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut want = Vec::new();
    if !district.is_empty() {
        want.push(("district".to_string(), district.clone()));
    }
    want.push(("gateway".into(), r.gateway.clone()));
    want.push(("kind".into(), r.kind.as_str().into()));
    want.push(("sensor".into(), r.sensor.clone()));
    assert_eq!(tags, want, "{text}");
    assert_eq!(p.timestamp, Some(r.ts.millis()), "{text}");
    assert_eq!(p.field_set.len(), r.values.len(), "{text}");
    for (name, got) in &p.field_set {
        let want = r.values[name.as_str()];
        let ty = r.kind.field(name.as_str()).map(|f| f.ty);
        match (ty, want, got) {
            (_, Value::Bool(b), FieldValue::Boolean(g)) => assert_eq!(b, *g),
            (Some(FieldType::Integer), Value::Num(v), FieldValue::I64(g)) => {
                assert_eq!(v as i64, *g)
            }
            (_, Value::Num(v), FieldValue::F64(g)) => {
                assert_eq!(v.to_bits(), g.to_bits(), "{name}: {text}")
            }
            other => panic!("{name}: wrote {want:?}, read {other:?}: {text}"),
        }
    }
});
