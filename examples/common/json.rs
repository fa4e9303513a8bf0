//! The JSON lines examples and benchmarks end with, written by serde_json. Shared by
//! examples/common (as `common::JsonLine`) and benches/common.
#![allow(dead_code)]
use anyhow::{bail, Result};

/// The one JSON line an example ends with, built field by field (in order) and written by
/// serde_json. Figures are rounded to the decimals asked for; a NaN or infinite one is written as
/// `null` and makes [`JsonLine::print`] return an error naming it, so the example exits non-zero.
pub struct JsonLine {
    fields: serde_json::Map<String, serde_json::Value>,
    non_finite: Vec<String>,
}

impl JsonLine {
    /// A line that starts with `"example": name`.
    pub fn new(example: &str) -> JsonLine {
        Self::starting("example", example)
    }

    /// A benchmark's line, starting with `"bench": name`.
    pub fn bench(name: &str) -> JsonLine {
        Self::starting("bench", name)
    }

    fn starting(key: &str, name: &str) -> JsonLine {
        let mut fields = serde_json::Map::new();
        fields.insert(key.into(), name.into());
        JsonLine {
            fields,
            non_finite: Vec::new(),
        }
    }

    /// Adds a value that is not a measured figure (counts, names, flags, lists).
    pub fn set(mut self, key: &str, value: impl Into<serde_json::Value>) -> JsonLine {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Adds a figure rounded to `decimals` places (`null`, and an error at print, if not finite).
    pub fn num(mut self, key: &str, value: f64, decimals: i32) -> JsonLine {
        let v = if value.is_finite() {
            let scale = 10f64.powi(decimals);
            serde_json::Number::from_f64((value * scale).round() / scale)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)
        } else {
            self.non_finite.push(format!("{key} = {value}"));
            serde_json::Value::Null
        };
        self.fields.insert(key.into(), v);
        self
    }

    /// Prints the line to standard output; an error if any figure was not finite.
    pub fn print(self) -> Result<()> {
        println!("{}", serde_json::Value::Object(self.fields));
        if !self.non_finite.is_empty() {
            bail!(
                "non-finite results (written as null): {}",
                self.non_finite.join(", ")
            );
        }
        Ok(())
    }
}
