//! Statuses derived on the platform from readings and registry thresholds
//! (DESIGN.md §3). Thresholds always come from the registry: nothing here
//! hard-codes a level for a real gauge.

use serde::Serialize;

use crate::registry::Thresholds;

/// Flood alert level in Indonesian practice: 4 = normal … 1 = most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SiagaLevel(pub u8);

impl SiagaLevel {
    /// Human label (`Normal`, `Siaga 3`, ...).
    pub fn label(self) -> &'static str {
        match self.0 {
            4 => "Normal",
            3 => "Siaga 3 (Waspada)",
            2 => "Siaga 2 (Siaga)",
            _ => "Siaga 1 (Awas)",
        }
    }
}

/// The Siaga level of `value` (cm) against a gauge's thresholds.
pub fn siaga_level(value: f64, t: &Thresholds) -> SiagaLevel {
    if value >= t.siaga1 {
        SiagaLevel(1)
    } else if value >= t.siaga2 {
        SiagaLevel(2)
    } else if value >= t.siaga3 {
        SiagaLevel(3)
    } else {
        SiagaLevel(4)
    }
}

/// Rain intensity class after BMKG's hourly bands (mm/h).
pub fn rain_class(mm_per_h: f64) -> &'static str {
    if mm_per_h <= 0.0 {
        "none"
    } else if mm_per_h < 5.0 {
        "light"
    } else if mm_per_h < 10.0 {
        "moderate"
    } else if mm_per_h < 20.0 {
        "heavy"
    } else {
        "very_heavy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_thresholds() {
        let t = Thresholds {
            siaga3: 150.0,
            siaga2: 200.0,
            siaga1: 250.0,
        };
        assert_eq!(siaga_level(100.0, &t), SiagaLevel(4));
        assert_eq!(siaga_level(150.0, &t), SiagaLevel(3));
        assert_eq!(siaga_level(230.0, &t), SiagaLevel(2));
        assert_eq!(siaga_level(300.0, &t), SiagaLevel(1));
        assert_eq!(rain_class(0.0), "none");
        assert_eq!(rain_class(12.0), "heavy");
    }
}
