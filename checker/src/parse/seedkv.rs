//! seedkv's own format: one JSON [`Record`] per line.
//!
//! Exists so that each record is decoded *and* validated against the format's
//! rules here, with the line number in the error, before any checking starts.

use crate::error::ParseError;
use crate::record::{validate_record, Record};

/// Parses JSON lines; blank lines and lines starting with `#` are skipped.
pub(super) fn parse(text: &str) -> Result<Vec<Record>, ParseError> {
    let mut records = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let record: Record = serde_json::from_str(trimmed)
            .map_err(|e| ParseError::at(lineno, format!("invalid seedkv record: {e}")))?;
        validate_record(&record)
            .map_err(|m| ParseError::at(lineno, format!("invalid seedkv record: {m}")))?;
        records.push(record);
    }
    Ok(records)
}
