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

/// Level-of-service bands for traffic: grades A–E by upper bounds of the
/// volume/capacity ratio and by lower bounds of the mean speed; beyond the
/// last band, F. The grade reported is the worse of the two (speed only
/// when the counter reports it). Defaults after the Indonesian highway
/// capacity guidance (PKJI 2023, urban roads) and the transport ministry's
/// regulation KM 14/2006; a deployment may set its own in the server's
/// config file under `[level_of_service]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LosBands {
    /// Upper bounds of v/c for A, B, C, D, E (increasing).
    pub volume_capacity: [f64; 5],
    /// Lower bounds of mean speed in km/h for A, B, C, D, E (decreasing).
    pub speed_kmh: [f64; 5],
}

impl Default for LosBands {
    fn default() -> Self {
        Self {
            volume_capacity: [0.35, 0.54, 0.77, 0.90, 1.00],
            speed_kmh: [48.0, 40.0, 32.0, 24.0, 16.0],
        }
    }
}

const GRADES: [&str; 6] = ["A", "B", "C", "D", "E", "F"];

impl LosBands {
    /// Checks the bands are finite and ordered; the message names the list.
    pub fn check(&self) -> Result<(), String> {
        let vc = &self.volume_capacity;
        if !vc.iter().all(|x| x.is_finite() && *x > 0.0) || vc.windows(2).any(|w| w[0] >= w[1]) {
            return Err("level_of_service.volume_capacity: five increasing positive bounds".into());
        }
        let sp = &self.speed_kmh;
        if !sp.iter().all(|x| x.is_finite() && *x >= 0.0) || sp.windows(2).any(|w| w[0] <= w[1]) {
            return Err("level_of_service.speed_kmh: five decreasing bounds".into());
        }
        Ok(())
    }

    /// Grade from the volume/capacity ratio.
    pub fn by_volume_capacity(&self, vc: f64) -> &'static str {
        let i = self
            .volume_capacity
            .iter()
            .position(|b| vc <= *b)
            .unwrap_or(5);
        GRADES[i]
    }

    /// Grade from the mean speed.
    pub fn by_speed(&self, kmh: f64) -> &'static str {
        let i = self.speed_kmh.iter().position(|b| kmh >= *b).unwrap_or(5);
        GRADES[i]
    }

    /// The worse of the two grades (speed when known).
    pub fn grade(&self, vc: f64, speed_kmh: Option<f64>) -> &'static str {
        let a = self.by_volume_capacity(vc);
        match speed_kmh.map(|s| self.by_speed(s)) {
            Some(b) if b > a => b,
            _ => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_of_service_takes_the_worse_of_volume_and_speed() {
        let b = LosBands::default();
        assert_eq!(b.by_volume_capacity(0.2), "A");
        assert_eq!(b.by_volume_capacity(0.6), "C");
        assert_eq!(b.by_volume_capacity(1.2), "F");
        assert_eq!(b.by_speed(60.0), "A");
        assert_eq!(b.by_speed(20.0), "E");
        assert_eq!(b.by_speed(5.0), "F");
        assert_eq!(b.grade(0.2, Some(20.0)), "E");
        assert_eq!(b.grade(0.95, Some(60.0)), "E");
        assert_eq!(b.grade(0.6, None), "C");
        assert!(b.check().is_ok());
        let bad = LosBands {
            volume_capacity: [0.5, 0.4, 0.77, 0.9, 1.0],
            ..LosBands::default()
        };
        assert!(bad.check().unwrap_err().contains("volume_capacity"));
    }

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
