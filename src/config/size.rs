//! Sizes in config files: `32768`, `"512B"`, `"32KB"`, `"100MB"`, `"1GB"`.
//!
//! As in nginx, a kilobyte is 1024 bytes (`KB`, `K` and `KiB` all mean it).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// A byte count written as a number, or a number and a unit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanSize(pub u64);

/// The hint shown with every size error.
pub const SIZE_HELP: &str =
    "write a number of bytes, or a number followed by B, KB, MB or GB, like \"32KB\" or \"100MB\"";

/// Parses `"512B"`, `"32KB"`, `"100MB"`, `"1GB"` (units of 1024, case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(format!("invalid size \"{text}\": {SIZE_HELP}"));
    }
    let n: u64 = number
        .parse()
        .map_err(|_| format!("size \"{text}\" is too large"))?;
    let per_unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size \"{text}\": {SIZE_HELP}")),
    };
    n.checked_mul(per_unit)
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

/// Formats a size the way config files write it (`512B`, `32KB`, `100MB`).
pub fn format_size(n: u64) -> String {
    for (unit, per) in [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10)] {
        if n >= per && n.is_multiple_of(per) {
            return format!("{}{unit}", n / per);
        }
    }
    format!("{n}B")
}

impl fmt::Debug for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = HumanSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"32KB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanSize, E> {
                parse_size(v).map(HumanSize).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanSize, E> {
                u64::try_from(v)
                    .map(HumanSize)
                    .map_err(|_| E::custom(format!("size {v} is negative: {SIZE_HELP}")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_print_with_units_of_1024() {
        assert_eq!(parse_size("32KB"), Ok(32 * 1024));
        assert_eq!(parse_size(" 100mb "), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("7B"), Ok(7));
        assert!(parse_size("MB").unwrap_err().contains("invalid size"));
        assert!(
            parse_size("3 parsecs")
                .unwrap_err()
                .contains("invalid size")
        );
        assert!(
            parse_size("99999999999999GB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(format_size(32 * 1024), "32KB");
        assert_eq!(format_size(100 << 20), "100MB");
        assert_eq!(format_size(1000), "1000B");
    }
}
