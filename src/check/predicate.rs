//! [`Predicate`]: one expectation over one observation, as written in a lab.
//!
//! Syntax (a YAML string, or a bare number/boolean meaning `==`):
//!
//! | written                                  | holds when the observation …              |
//! | ---------------------------------------- | ----------------------------------------- |
//! | `"== 400"`, `400`                        | equals 400                                |
//! | `"== workers * increments"`              | equals the product of two parameters      |
//! | `"!= 0"`, `"> 0"`, `">= 1"`, `"< 5"`     | compares so                               |
//! | `"<= published - delivered"`             | compares with other observations          |
//! | `"between 0.3 and 0.4"`                  | lies in the closed range (`between 0.3 0.4` also works for plain numbers) |
//! | `true`, `"== h2"`                        | equals the boolean or text                |
//!
//! The operand of a number observation is arithmetic (`+ - * /`, parentheses,
//! `min(a, b)`, `max(a, b)`, `ceil(x)`, `floor(x)`) over numbers, the
//! scenario's parameters and the exercise's observations, so an expectation
//! stays right when an instructor changes the parameters.
//! Whether a name exists is checked at validation; its value is taken when the
//! check runs. An observation named in an operand that was not observed makes
//! the check Unknown, never Pass.

use std::fmt;

use exmex::{Express, FlatEx};
use serde_json::Value;

use crate::exercise::ObsKind;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

// Longest first, so `>=` is not read as `>` followed by `=1`.
const OPERATORS: &[(&str, Op)] = &[
    ("==", Op::Eq),
    ("!=", Op::Ne),
    (">=", Op::Ge),
    ("<=", Op::Le),
    (">", Op::Gt),
    ("<", Op::Lt),
];

impl Op {
    fn symbol(self) -> &'static str {
        OPERATORS
            .iter()
            .find(|(_, o)| *o == self)
            .map(|(s, _)| *s)
            .unwrap_or("?")
    }

    fn ordering(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }
}

/// An arithmetic expression over numbers, parameters and observations.
#[derive(Clone)]
pub struct Expr {
    text: String,
    flat: Box<FlatEx<f64>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({})", self.text)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Expr {
    /// Parses arithmetic; the error names the text.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let text = text.trim();
        let not_arithmetic = || {
            format!(
                "`{text}` is not arithmetic over numbers, parameters and observations \
                 (e.g. `workers * increments`)"
            )
        };
        if text.is_empty() || text.starts_with(['=', '<', '>', '!']) {
            return Err(not_arithmetic());
        }
        let flat = Box::new(exmex::parse::<f64>(&braced(text)).map_err(|_| not_arithmetic())?);
        Ok(Expr {
            text: text.to_string(),
            flat,
        })
    }

    /// The names it refers to, alphabetically.
    pub fn names(&self) -> &[String] {
        self.flat.var_names()
    }

    /// Its value, with names looked up by `lookup`.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<f64>) -> Result<f64, String> {
        let mut values = Vec::with_capacity(self.names().len());
        for name in self.names() {
            values.push(lookup(name).ok_or_else(|| format!("`{name}` was not observed"))?);
        }
        let v = self
            .flat
            .eval(&values)
            .map_err(|e| format!("`{}`: {e}", self.text))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("`{}` has no finite value", self.text))
        }
    }

    /// Whether it is a plain number (no names).
    fn is_constant(&self) -> bool {
        self.names().is_empty()
    }
}

/// `text` with every name put in braces (`{max_holders} * 2`), exmex's
/// syntax for a variable whatever its spelling: otherwise a name that starts
/// like one of its functions (`max…`, `min…`, `e…`) is read as that function.
/// A name followed by `(` is a function call (`min(a, b)`) and stays as is.
fn braced(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.char_indices().peekable();
    let mut in_number = false;
    while let Some((i, c)) = chars.next() {
        // `1e3`, `2.5E-1`: an exponent belongs to its number.
        let exponent = in_number && matches!(c, 'e' | 'E');
        if exponent || !(c.is_ascii_alphabetic() || c == '_') {
            in_number = c.is_ascii_digit() || c == '.' || (in_number && matches!(c, 'e' | 'E'));
            out.push(c);
            continue;
        }
        in_number = false;
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = chars.peek() {
            if d.is_ascii_alphanumeric() || d == '_' {
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let name = &text[i..end];
        let call = text[end..].trim_start().starts_with('(');
        if call {
            out.push_str(name);
        } else {
            out.push('{');
            out.push_str(name);
            out.push('}');
        }
    }
    out
}

/// What an observation is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A boolean or a text, compared as is.
    Literal(Value),
    /// Arithmetic, evaluated when the check runs.
    Expr(Expr),
}

impl Operand {
    fn names(&self) -> &[String] {
        match self {
            Operand::Expr(e) => e.names(),
            Operand::Literal(_) => &[],
        }
    }

    fn resolve(&self, lookup: &dyn Fn(&str) -> Option<f64>) -> Result<Value, String> {
        match self {
            Operand::Literal(v) => Ok(v.clone()),
            Operand::Expr(e) => e.eval(lookup).map(number),
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Literal(Value::String(s)) => write!(f, "{s}"),
            Operand::Literal(v) => write!(f, "{v}"),
            Operand::Expr(e) => write!(f, "{}", e.text),
        }
    }
}

/// A parsed expectation.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    /// `OP operand`.
    Compare(Op, Operand),
    /// `between LO and HI`, inclusive.
    Between(Expr, Expr),
}

impl Predicate {
    /// Parses the written form for an observation of kind `kind`. The error
    /// says what was expected.
    pub fn parse(text: &str, kind: ObsKind) -> Result<Predicate, String> {
        let t = text.trim();
        if let Some(rest) = t.strip_prefix("between") {
            return Self::between(t, rest, kind);
        }
        let Some((op, rest)) = OPERATORS
            .iter()
            .find_map(|(s, op)| t.strip_prefix(s).map(|rest| (*op, rest.trim())))
        else {
            return Err(format!(
                "`{t}` is not a predicate: expected `== X`, `!= X`, `> X`, `>= X`, `< X`, \
                 `<= X` or `between LO and HI`"
            ));
        };
        if rest.is_empty() {
            return Err(format!("`{t}`: a value must follow `{}`", op.symbol()));
        }
        if rest.starts_with(['=', '<', '>', '!']) {
            return Err(format!(
                "`{t}`: unexpected `{}` after `{}`; operators are == != > >= < <=",
                &rest[..1],
                op.symbol()
            ));
        }
        let operand = match kind {
            ObsKind::Number => Operand::Expr(Expr::parse(rest).map_err(|e| format!("`{t}`: {e}"))?),
            _ if op.ordering() => {
                return Err(format!(
                    "`{t}`: `{}` compares numbers, and this observation is {}",
                    op.symbol(),
                    kind.describe()
                ));
            }
            ObsKind::Bool => match rest {
                "true" => Operand::Literal(Value::Bool(true)),
                "false" => Operand::Literal(Value::Bool(false)),
                _ => {
                    return Err(format!(
                        "`{t}`: this observation is true or false, not `{rest}`"
                    ));
                }
            },
            ObsKind::Text => Operand::Literal(Value::String(unquote(rest).to_string())),
            ObsKind::List => {
                let list: Value = serde_json::from_str(rest).map_err(|_| {
                    format!("`{t}`: this observation is a list; write it as `== [1, 2]`")
                })?;
                if !list.is_array() {
                    return Err(format!("`{t}`: this observation is a list, not `{rest}`"));
                }
                Operand::Literal(list)
            }
        };
        Ok(Predicate::Compare(op, operand))
    }

    fn between(t: &str, rest: &str, kind: ObsKind) -> Result<Predicate, String> {
        if kind != ObsKind::Number {
            return Err(format!(
                "`{t}`: `between` compares numbers, and this observation is {}",
                kind.describe()
            ));
        }
        let usage = || format!("`{t}`: write `between LO and HI`, e.g. `between 0.3 and 0.4`");
        let (lo, hi) = match rest.split_once(" and ") {
            Some(pair) => pair,
            None => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                match parts.as_slice() {
                    [lo, hi] => (*lo, *hi),
                    _ => return Err(usage()),
                }
            }
        };
        let lo = Expr::parse(lo).map_err(|e| format!("`{t}`: {e}"))?;
        let hi = Expr::parse(hi).map_err(|e| format!("`{t}`: {e}"))?;
        if lo.is_constant() && hi.is_constant() {
            let none = |_: &str| None;
            let (l, h) = (lo.eval(&none)?, hi.eval(&none)?);
            if l > h {
                return Err(format!(
                    "`{t}`: the lower bound {l} is above the upper bound {h}"
                ));
            }
        }
        Ok(Predicate::Between(lo, hi))
    }

    /// A bare YAML scalar: a number or boolean means equality, a string is
    /// the written form.
    pub fn from_scalar(value: &Value, kind: ObsKind) -> Result<Predicate, String> {
        match value {
            Value::String(s) => Predicate::parse(s, kind),
            Value::Number(n) if kind == ObsKind::Number => {
                Predicate::parse(&format!("== {n}"), kind)
            }
            Value::Bool(b) if kind == ObsKind::Bool => Predicate::parse(&format!("== {b}"), kind),
            other => Err(format!(
                "expected a predicate such as \"> 0\" for this observation ({}), found {other}",
                kind.describe()
            )),
        }
    }

    /// Every name the predicate refers to (parameters and observations).
    pub fn names(&self) -> Vec<&str> {
        let names: Vec<&String> = match self {
            Predicate::Compare(_, o) => o.names().iter().collect(),
            Predicate::Between(lo, hi) => lo.names().iter().chain(hi.names()).collect(),
        };
        names.into_iter().map(String::as_str).collect()
    }

    /// The predicate with every name replaced by its value (`== 400`), for
    /// reports. `Err` when a name has no value.
    pub fn resolved(&self, lookup: &dyn Fn(&str) -> Option<f64>) -> Result<String, String> {
        Ok(match self {
            Predicate::Compare(op, o) => {
                format!("{} {}", op.symbol(), show(&o.resolve(lookup)?))
            }
            Predicate::Between(lo, hi) => format!(
                "between {} and {}",
                show(&number(lo.eval(lookup)?)),
                show(&number(hi.eval(lookup)?))
            ),
        })
    }

    /// Whether `observed` satisfies the predicate. `Err` when it cannot be
    /// decided (a text against `> 0`, a name with no value): that is an
    /// Unknown, not a failure.
    pub fn holds(
        &self,
        observed: &Value,
        lookup: &dyn Fn(&str) -> Option<f64>,
    ) -> Result<bool, String> {
        let num = || {
            observed
                .as_f64()
                .ok_or_else(|| format!("observed {observed} is not a number"))
        };
        Ok(match self {
            Predicate::Compare(op, operand) => {
                let target = operand.resolve(lookup)?;
                match op {
                    Op::Eq => equal(observed, &target),
                    Op::Ne => !equal(observed, &target),
                    _ => {
                        let (x, y) = (num()?, target.as_f64().unwrap_or(f64::NAN));
                        match op {
                            Op::Gt => x > y,
                            Op::Ge => x >= y,
                            Op::Lt => x < y,
                            _ => x <= y,
                        }
                    }
                }
            }
            Predicate::Between(lo, hi) => {
                let (lo, hi) = (lo.eval(lookup)?, hi.eval(lookup)?);
                (lo..=hi).contains(&num()?)
            }
        })
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// A number as JSON: whole numbers as integers, so reports say `400`, not `400.0`.
fn number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from((v * 1e6).round() / 1e6)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Predicate::Compare(op, o) => write!(f, "{} {o}", op.symbol()),
            Predicate::Between(lo, hi) => write!(f, "between {} and {}", lo.text, hi.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(text: &str) -> Predicate {
        Predicate::parse(text, ObsKind::Number).unwrap()
    }

    fn none(_: &str) -> Option<f64> {
        None
    }

    fn holds(p: &Predicate, v: Value) -> bool {
        p.holds(&v, &none).unwrap()
    }

    #[test]
    fn parses_every_operator() {
        assert!(holds(&n("== 400"), json!(400)));
        assert!(!holds(&n("== 400"), json!(399)));
        assert!(holds(&n(">= 1"), json!(1)));
        assert!(holds(&n("<=1"), json!(0.5)));
        assert!(!holds(&n("> 1"), json!(1)));
        assert!(holds(&n("< 2.5"), json!(2)));
        assert!(holds(&n("!= 0"), json!(3)));
        assert!(holds(&n("between 0.3 0.4"), json!(0.4)));
        assert!(holds(&n("between 0.3 and 0.4"), json!(0.3)));
    }

    #[test]
    fn expressions_read_parameters_and_observations() {
        let p = n("== workers * increments");
        assert_eq!(p.names(), vec!["increments", "workers"]);
        let lookup = |name: &str| match name {
            "workers" => Some(8.0),
            "increments" => Some(50.0),
            _ => None,
        };
        assert!(p.holds(&json!(400), &lookup).unwrap());
        assert!(!p.holds(&json!(399), &lookup).unwrap());
        assert_eq!(p.resolved(&lookup).unwrap(), "== 400");
        let b = n("between 0.5 * workers and (workers + 2) / 2");
        assert!(b.holds(&json!(5), &lookup).unwrap());
        assert_eq!(b.resolved(&lookup).unwrap(), "between 4 and 5");
        // A name with no value is undecidable, not a failure.
        assert!(n("== missing + 1").holds(&json!(1), &lookup).is_err());
    }

    #[test]
    fn names_that_start_like_functions_are_names() {
        let p = n("<= maxmemory_bytes / 2 + min(e_count, 3)");
        assert_eq!(p.names(), vec!["e_count", "maxmemory_bytes"]);
        let lookup = |name: &str| match name {
            "maxmemory_bytes" => Some(100.0),
            "e_count" => Some(7.0),
            _ => None,
        };
        assert_eq!(p.resolved(&lookup).unwrap(), "<= 53");
        assert!(n("== 1.5 * 2").holds(&json!(3), &none).unwrap());
        assert!(
            n("== max(2, 3) + ceil(0.2) - floor(0.9)")
                .holds(&json!(4), &none)
                .unwrap()
        );
    }

    #[test]
    fn booleans_texts_and_lists() {
        let b = Predicate::from_scalar(&json!(true), ObsKind::Bool).unwrap();
        assert!(holds(&b, json!(true)));
        let t = Predicate::parse("== h2", ObsKind::Text).unwrap();
        assert!(holds(&t, json!("h2")));
        assert!(t.names().is_empty());
        let l = Predicate::parse("== [1, 2]", ObsKind::List).unwrap();
        assert!(holds(&l, json!([1, 2])));
    }

    #[test]
    fn rejects_malformed_predicates() {
        for bad in [
            "> ",
            "~ 3",
            "=== 400",
            "== = 400",
            "> 3 +",
            "between 1",
            "between 5 and 1",
            "400",
        ] {
            assert!(
                Predicate::parse(bad, ObsKind::Number).is_err(),
                "{bad} should not parse"
            );
        }
        assert!(Predicate::parse("> 0", ObsKind::Text).is_err());
        assert!(Predicate::parse("== maybe", ObsKind::Bool).is_err());
        assert!(Predicate::parse("=== x", ObsKind::Text).is_err());
        assert!(Predicate::from_scalar(&json!("h2"), ObsKind::Number).is_err());
        assert!(Predicate::from_scalar(&json!(3), ObsKind::Bool).is_err());
    }

    #[test]
    fn a_text_against_a_number_is_undecidable() {
        assert!(n("> 1").holds(&json!("x"), &none).is_err());
    }
}
