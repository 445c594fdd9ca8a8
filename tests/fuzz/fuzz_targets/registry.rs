//! The registry parser (TOML, then every sensor rule) on arbitrary text.
//!
//! Beyond "never panics": a registry that parses, written back as TOML
//! (what the admin API and `pantau registry export` do with specs),
//! parses to the same registry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pantau_model::{Registry, SensorSpec};

#[derive(serde::Serialize)]
struct File {
    sensor: Vec<SensorSpec>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(registry) = Registry::parse(text) else {
        return;
    };
    let file = File {
        sensor: registry.sensors().map(|s| s.spec()).collect(),
    };
    let written = toml::to_string(&file).expect("specs serialize");
    let again = Registry::parse(&written)
        .unwrap_or_else(|e| panic!("written back, it no longer parses: {e}\n{written}"));
    assert_eq!(again, registry, "{written}");
});
