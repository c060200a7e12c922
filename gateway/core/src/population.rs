//! Deterministic synthetic populations.
//!
//! `healthgate seed` writes a population snapshot that `serve` loads, and the
//! load generator rebuilds the very same holders from the same parameters
//! without reading the file: holder `i` of a population is a pure function
//! of `(seed, i)` and the colour mix. Identifiers come from a SplitMix64
//! stream, which is fast (10 M holders in well under a second) and spreads
//! well; they are pseudonymous test data, not secrets.

use crate::color::Color;
use crate::holder::HolderId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Fractions of each colour, in [`Color::ALL`] order; they sum to one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    pub green: f64,
    pub yellow: f64,
    pub red: f64,
    pub pending: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix { green: 0.95, yellow: 0.03, red: 0.01, pending: 0.01 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad colour mix {0:?}: {1}")]
pub struct ParseMixError(pub String, pub &'static str);

impl FromStr for Mix {
    type Err = ParseMixError;
    /// `green=0.95,yellow=0.03,red=0.01,pending=0.01`; unnamed colours are 0.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseMixError(s.to_owned(), why);
        let mut f = [0f64; 4];
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or(err("expected colour=fraction"))?;
            let color: Color = name.trim().parse().map_err(|_| err("unknown colour"))?;
            let v: f64 = value.trim().parse().map_err(|_| err("fraction is not a number"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(err("fractions are between 0 and 1"));
            }
            f[color.index()] = v;
        }
        if (f.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(err("fractions must sum to 1"));
        }
        Ok(Mix { green: f[0], yellow: f[1], red: f[2], pending: f[3] })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "green={},yellow={},red={},pending={}", self.green, self.yellow, self.red, self.pending)
    }
}

/// The parameters that fully determine a population.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Population {
    pub seed: u64,
    pub size: u64,
    pub mix: Mix,
}

/// SplitMix64's finaliser: a bijection on u64 with good avalanche.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Population {
    fn word(&self, i: u64, lane: u64) -> u64 {
        mix64(self.seed.wrapping_mul(GOLDEN) ^ mix64(i.wrapping_mul(4).wrapping_add(lane)))
    }

    /// Holder `i`'s identifier.
    pub fn holder(&self, i: u64) -> HolderId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.word(i, 0).to_be_bytes());
        id[8..].copy_from_slice(&self.word(i, 1).to_be_bytes());
        HolderId(id)
    }

    /// Holder `i`'s colour, drawn by the mix.
    pub fn color(&self, i: u64) -> Color {
        // 53 random bits as a uniform fraction in [0, 1).
        let u = (self.word(i, 2) >> 11) as f64 / (1u64 << 53) as f64;
        let m = &self.mix;
        let mut acc = m.green;
        if u < acc {
            return Color::Green;
        }
        acc += m.yellow;
        if u < acc {
            return Color::Yellow;
        }
        acc += m.red;
        if u < acc || m.pending == 0.0 {
            return Color::Red;
        }
        Color::Pending
    }

    /// An identifier that is not in this population (probability 2^-128
    /// aside): lane 3 is never used for members.
    pub fn stranger(&self, i: u64) -> HolderId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.word(i, 3).to_be_bytes());
        id[8..].copy_from_slice(&mix64(self.word(i, 3) ^ GOLDEN).to_be_bytes());
        HolderId(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (HolderId, Color)> + '_ {
        (0..self.size).map(|i| (self.holder(i), self.color(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_mixed() {
        let p = Population { seed: 7, size: 100_000, mix: Mix::default() };
        assert_eq!(p.holder(5), p.holder(5));
        assert_ne!(p.holder(5), p.holder(6));
        assert_ne!(p.holder(5), Population { seed: 8, ..p }.holder(5));
        let mut counts = [0u64; 4];
        for (_, c) in p.iter() {
            counts[c.index()] += 1;
        }
        // 95 % green within a comfortable statistical margin.
        assert!((94_000..96_000).contains(&counts[0]), "{counts:?}");
        assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
    }

    #[test]
    fn mix_parsing() {
        let m: Mix = "green=0.5,red=0.5".parse().unwrap();
        assert_eq!(m.red, 0.5);
        assert_eq!(m.yellow, 0.0);
        assert!("green=0.5".parse::<Mix>().is_err());
        assert!("blue=1".parse::<Mix>().is_err());
        assert_eq!(m.to_string().parse::<Mix>().unwrap(), m);
    }
}
