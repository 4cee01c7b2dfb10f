//! Durations as written in lab and catalog files: `500ms`, `2s`, `1m30s`.

use std::time::Duration;

/// Parses a human duration; the error says what was expected.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{text}` is not a duration: expected e.g. `500ms`, `2s`, `1m`"))
}
