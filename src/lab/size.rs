//! Memory sizes as written in lab files, in Docker's units: `64m`, `1g`,
//! `512k`, `1.5g`, or a number of bytes (binary multiples, as `docker run
//! --memory` reads them).

/// Parses a size into bytes; the error says what was expected.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], Some(c)),
        _ => (t, None),
    };
    let shift = match unit {
        None => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some(_) => return Err(expected(text)),
    };
    let n: f64 = number.trim().parse().map_err(|_| expected(text))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(expected(text));
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

fn expected(text: &str) -> String {
    format!("`{text}` is not a memory size: expected e.g. `64m`, `512k`, `1g`")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn docker_units_are_binary() {
        assert_eq!(parse("64m"), Ok(64 << 20));
        assert_eq!(parse("1g"), Ok(1 << 30));
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("512k"), Ok(512 << 10));
        assert_eq!(parse("256MiB"), Ok(256 << 20));
        assert_eq!(parse("4096"), Ok(4096));
    }

    #[test]
    fn rejects_what_docker_would() {
        for bad in ["", "m", "-1m", "12x", "lots", "0"] {
            assert!(
                parse(bad).unwrap_err().contains("not a memory size"),
                "{bad}"
            );
        }
    }
}
