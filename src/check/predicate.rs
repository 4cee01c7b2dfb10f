//! [`Predicate`]: one expectation over one observation, as written in a lab.
//!
//! Syntax (a YAML string, or a bare scalar meaning `==`):
//!
//! | written              | holds when the observation …            |
//! | -------------------- | --------------------------------------- |
//! | `"== 400"`, `400`    | equals 400 (numbers compare as numbers) |
//! | `"!= 0"`             | differs from 0                          |
//! | `"> 0"`, `">= 1"`    | is greater (or equal)                   |
//! | `"< 5"`, `"<= 1"`    | is less (or equal)                      |
//! | `"between 0.3 0.4"`  | lies in the closed range [0.3, 0.4]     |
//! | `true`, `"== h2"`    | equals the boolean or string            |

use std::fmt;

use serde_json::Value;

/// A parsed expectation.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// `== v` (numbers, booleans or strings).
    Eq(Value),
    /// `!= v`.
    Ne(Value),
    /// `> n`.
    Gt(f64),
    /// `>= n`.
    Ge(f64),
    /// `< n`.
    Lt(f64),
    /// `<= n`.
    Le(f64),
    /// `between lo hi`, inclusive.
    Between(f64, f64),
}

impl Predicate {
    /// Parses the written form. The error says what was expected.
    pub fn parse(text: &str) -> Result<Predicate, String> {
        let t = text.trim();
        if let Some(rest) = t.strip_prefix("between") {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let [lo, hi] = parts.as_slice() else {
                return Err(format!(
                    "`{t}`: `between` takes two numbers, e.g. `between 0.3 0.4`"
                ));
            };
            let (lo, hi) = (number(lo, t)?, number(hi, t)?);
            if lo > hi {
                return Err(format!(
                    "`{t}`: the lower bound {lo} is above the upper bound {hi}"
                ));
            }
            return Ok(Predicate::Between(lo, hi));
        }
        for (op, make) in OPERATORS {
            if let Some(rest) = t.strip_prefix(op) {
                let rest = rest.trim();
                if rest.is_empty() {
                    return Err(format!("`{t}`: a value must follow `{op}`"));
                }
                return make(rest, t);
            }
        }
        Err(format!(
            "`{t}` is not a predicate: expected `== N`, `!= N`, `> N`, `>= N`, `< N`, `<= N` or `between LO HI`"
        ))
    }

    /// A bare YAML scalar (`400`, `true`, `h2`) means equality.
    pub fn from_scalar(value: &Value) -> Result<Predicate, String> {
        match value {
            Value::String(s) => Predicate::parse(s),
            Value::Number(_) | Value::Bool(_) => Ok(Predicate::Eq(value.clone())),
            other => Err(format!(
                "expected a predicate string such as \"> 0\" or a plain number/boolean, found {other}"
            )),
        }
    }

    /// Whether `observed` satisfies the predicate. `Err` when the types cannot be
    /// compared (a string against `> 0`): that is a broken check, not a failure.
    pub fn holds(&self, observed: &Value) -> Result<bool, String> {
        let num = || {
            observed
                .as_f64()
                .or_else(|| observed.as_bool().map(|b| b as u8 as f64))
                .ok_or_else(|| format!("observed {observed} is not a number"))
        };
        Ok(match self {
            Predicate::Eq(v) => equal(observed, v),
            Predicate::Ne(v) => !equal(observed, v),
            Predicate::Gt(n) => num()? > *n,
            Predicate::Ge(n) => num()? >= *n,
            Predicate::Lt(n) => num()? < *n,
            Predicate::Le(n) => num()? <= *n,
            Predicate::Between(lo, hi) => (*lo..=*hi).contains(&num()?),
        })
    }
}

type Make = fn(&str, &str) -> Result<Predicate, String>;

// Longest operators first so `>=` is not read as `>` followed by `=1`.
const OPERATORS: &[(&str, Make)] = &[
    ("==", |v, _| Ok(Predicate::Eq(literal(v)))),
    ("!=", |v, _| Ok(Predicate::Ne(literal(v)))),
    (">=", |v, t| number(v, t).map(Predicate::Ge)),
    ("<=", |v, t| number(v, t).map(Predicate::Le)),
    (">", |v, t| number(v, t).map(Predicate::Gt)),
    ("<", |v, t| number(v, t).map(Predicate::Lt)),
];

fn number(s: &str, whole: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| format!("`{whole}`: `{s}` is not a number"))
}

fn literal(s: &str) -> Value {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(n) = s.parse::<f64>() {
        return Value::from(n);
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(s.trim_matches('"').trim_matches('\'').to_string()),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self {
            Predicate::Eq(v) => write!(f, "== {}", show(v)),
            Predicate::Ne(v) => write!(f, "!= {}", show(v)),
            Predicate::Gt(n) => write!(f, "> {n}"),
            Predicate::Ge(n) => write!(f, ">= {n}"),
            Predicate::Lt(n) => write!(f, "< {n}"),
            Predicate::Le(n) => write!(f, "<= {n}"),
            Predicate::Between(lo, hi) => write!(f, "between {lo} {hi}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_operator() {
        assert_eq!(
            Predicate::parse("== 400").unwrap(),
            Predicate::Eq(json!(400))
        );
        assert_eq!(Predicate::parse(">= 1").unwrap(), Predicate::Ge(1.0));
        assert_eq!(Predicate::parse("<=1").unwrap(), Predicate::Le(1.0));
        assert_eq!(Predicate::parse("> 0").unwrap(), Predicate::Gt(0.0));
        assert_eq!(Predicate::parse("< 2.5").unwrap(), Predicate::Lt(2.5));
        assert_eq!(Predicate::parse("!= 0").unwrap(), Predicate::Ne(json!(0)));
        assert_eq!(
            Predicate::parse("between 0.3 0.4").unwrap(),
            Predicate::Between(0.3, 0.4)
        );
        assert_eq!(
            Predicate::parse("== h2").unwrap(),
            Predicate::Eq(json!("h2"))
        );
    }

    #[test]
    fn rejects_malformed_predicates() {
        for bad in ["> ", "~ 3", "> many", "between 1", "between 5 1", "400"] {
            assert!(Predicate::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn evaluates_numbers_booleans_and_strings() {
        assert!(
            Predicate::parse("== 400")
                .unwrap()
                .holds(&json!(400))
                .unwrap()
        );
        assert!(
            !Predicate::parse("== 400")
                .unwrap()
                .holds(&json!(399))
                .unwrap()
        );
        assert!(
            Predicate::parse("between 0.3 0.4")
                .unwrap()
                .holds(&json!(0.4))
                .unwrap()
        );
        assert!(!Predicate::parse("> 1").unwrap().holds(&json!(1)).unwrap());
        assert!(
            Predicate::from_scalar(&json!(true))
                .unwrap()
                .holds(&json!(true))
                .unwrap()
        );
        assert!(
            Predicate::parse("== h2")
                .unwrap()
                .holds(&json!("h2"))
                .unwrap()
        );
        assert!(Predicate::parse("> 1").unwrap().holds(&json!("x")).is_err());
    }
}
