//! Line protocol for Pantau's schema, written with InfluxData's own
//! `influxdb-line-protocol` builder (it does the escaping).
//!
//! Schema: measurement = sensor kind; tags `district`, `gateway`, `kind`,
//! `sensor` (sorted, as InfluxDB prefers; an empty district is omitted);
//! fields = the reading's values, typed by the kind's field spec (float,
//! integer, boolean); timestamp = observation time in milliseconds.

use influxdb_line_protocol::LineProtocolBuilder;
use pantau_model::{FieldType, Value};

use crate::log::LoggedReading;

/// One reading as a line (no trailing newline).
pub fn line(r: &LoggedReading, district: &str) -> String {
    let kind = r.kind.as_str();
    let mut b = LineProtocolBuilder::new().measurement(kind);
    if !district.is_empty() {
        b = b.tag("district", district);
    }
    let b = b
        .tag("gateway", &r.gateway)
        .tag("kind", kind)
        .tag("sensor", &r.sensor);
    let mut values = r.values.iter();
    let Some((first_name, first_value)) = values.next() else {
        return String::new();
    };
    let mut b = add_first(b, r, first_name, *first_value);
    for (name, value) in values {
        b = match field_value(r, name, *value) {
            Typed::F(v) => b.field(name, v),
            Typed::I(v) => b.field(name, v),
            Typed::B(v) => b.field(name, v),
        };
    }
    let bytes = b.timestamp(r.ts.millis()).close_line().build();
    let mut s = String::from_utf8(bytes).unwrap_or_default();
    if s.ends_with('\n') {
        s.pop();
    }
    s
}

enum Typed {
    F(f64),
    I(i64),
    B(bool),
}

fn field_value(r: &LoggedReading, name: &str, value: Value) -> Typed {
    match (r.kind.field(name).map(|f| f.ty), value) {
        (_, Value::Bool(b)) => Typed::B(b),
        (Some(FieldType::Integer), Value::Num(v)) => Typed::I(v as i64),
        (_, Value::Num(v)) => Typed::F(v),
    }
}

fn add_first(
    b: LineProtocolBuilder<Vec<u8>, influxdb_line_protocol::builder::AfterMeasurement>,
    r: &LoggedReading,
    name: &str,
    value: Value,
) -> LineProtocolBuilder<Vec<u8>, influxdb_line_protocol::builder::AfterField> {
    match field_value(r, name, value) {
        Typed::F(v) => b.field(name, v),
        Typed::I(v) => b.field(name, v),
        Typed::B(v) => b.field(name, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use influxdb_line_protocol::{parse_lines, FieldValue};
    use pantau_model::{SensorKind, Timestamp};
    use proptest::prelude::*;

    fn reading(sensor: &str, values: &[(&str, Value)]) -> LoggedReading {
        LoggedReading {
            sensor: sensor.into(),
            gateway: "gw-kota".into(),
            kind: SensorKind::TrafficCounter,
            ts: Timestamp(1_795_846_200_123),
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn writes_the_schema() {
        let r = reading(
            "tr-a",
            &[
                ("count_total", Value::Num(12.0)),
                ("mean_speed_kmh", Value::Num(41.5)),
            ],
        );
        assert_eq!(
            line(&r, "Dumai Kota"),
            "traffic_counter,district=Dumai\\ Kota,gateway=gw-kota,kind=traffic_counter,sensor=tr-a count_total=12i,mean_speed_kmh=41.5 1795846200123"
        );
        let berth = LoggedReading {
            kind: SensorKind::Berth,
            ..reading("br-a", &[("occupied", Value::Bool(true))])
        };
        assert!(line(&berth, "").contains(" occupied=true "));
    }

    proptest! {
        #[test]
        // Districts as the registry admits them: printable, no trailing backslash.
        fn hostile_tags_round_trip_through_the_parser(district in "([ -~\u{a0}-\u{2fff}]{0,30}[ -\\[\\]-~\u{a0}-\u{2fff}])?", gw in "[a-z0-9-]{1,20}", v in -1e6f64..1e6) {
            let r = LoggedReading { kind: SensorKind::FloodGauge, gateway: gw.clone(), ..reading("fl-x", &[("water_level_cm", Value::Num(v))]) };
            let text = line(&r, &district);
            let parsed: Vec<_> = parse_lines(&text).collect::<Result<_, _>>().map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
            prop_assert_eq!(parsed.len(), 1);
            let p = &parsed[0];
            prop_assert_eq!(p.series.measurement.as_str(), "flood_gauge");
            let tags: Vec<(String, String)> = p.series.tag_set.iter().flatten().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let want_district = (!district.is_empty()).then(|| ("district".to_string(), district.clone()));
            prop_assert_eq!(tags.iter().find(|t| t.0 == "district").cloned(), want_district);
            prop_assert!(tags.contains(&("gateway".to_string(), gw.clone())));
            match &p.field_set[0].1 { FieldValue::F64(x) => prop_assert_eq!(*x, v), other => prop_assert!(false, "{other:?}") }
            prop_assert_eq!(p.timestamp, Some(1_795_846_200_123));
        }
    }
}
