//! The four colours of a health code.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A health-code colour. The discriminants are the wire and disk encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Color {
    Green = 0,
    Yellow = 1,
    Red = 2,
    /// Submitted and under review (up to 24 h): never passes.
    Pending = 3,
}

impl Color {
    pub const ALL: [Color; 4] = [Color::Green, Color::Yellow, Color::Red, Color::Pending];

    pub const fn as_str(self) -> &'static str {
        match self {
            Color::Green => "green",
            Color::Yellow => "yellow",
            Color::Red => "red",
            Color::Pending => "pending",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Color> {
        match v {
            0 => Some(Color::Green),
            1 => Some(Color::Yellow),
            2 => Some(Color::Red),
            3 => Some(Color::Pending),
            _ => None,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown colour {0:?} (expected green, yellow, red or pending)")]
pub struct ParseColorError(pub String);

impl FromStr for Color {
    type Err = ParseColorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Color::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| ParseColorError(s.to_owned()))
    }
}
