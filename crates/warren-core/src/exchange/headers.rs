//! Headers exchange matching: the `x-match` binding argument and the header/argument comparison.
//!
//! Owns what a `headers` exchange needs to validate a binding and to decide whether a message's
//! headers match it. It mirrors RabbitMQ's `rabbit_exchange_type_headers` (`validate_binding/2`,
//! `headers_match/2`):
//!
//! * `x-match` may be absent (means `all`) or one of `all`, `any`, `all-with-x`, `any-with-x`
//!   as a string; anything else is refused with RabbitMQ's wording (the broker sends it as a
//!   `PRECONDITION_FAILED` (406) channel close, prefixed `PRECONDITION_FAILED - `).
//! * The binding argument `x-match` is never compared. Other binding arguments whose name starts
//!   with `x-` are ignored, except under `all-with-x` / `any-with-x`.
//! * A binding argument of type void matches when the message has a header of that name, whatever
//!   its value (even void). Any other binding argument matches when the header is present and its
//!   value is equal under Erlang's `==` on the decoded values, which RabbitMQ uses (the field
//!   *type* is not compared at the top level). See [`headers_match`] for what that means per type.
//! * `all` / `all-with-x` with no argument left to compare matches every message;
//!   `any` / `any-with-x` with none matches no message (RabbitMQ starts the fold with
//!   `AllMatch = true`, `AnyMatch = false`).

use std::fmt::Write as _;

use super::proto::{AMQPValue, FieldTable};
use crate::value::type_name;

/// How a headers binding combines its arguments: the `x-match` binding argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XMatch {
    /// Every compared argument must match (the default when `x-match` is absent).
    #[default]
    All,
    /// At least one compared argument must match.
    Any,
    /// Like `All`, but `x-` arguments are compared too.
    AllWithX,
    /// Like `Any`, but `x-` arguments are compared too.
    AnyWithX,
}

/// Reads and validates the `x-match` argument of a headers binding.
///
/// Absent means [`XMatch::All`]. A long string (or a short string, which the wire never carries
/// in a table but `amq-protocol` can represent) must spell one of the four modes exactly. The
/// error text is RabbitMQ's `validate_binding/2` message, with the value printed as Erlang's `~tp`
/// would print it (approximately, for floats and non-printable binaries).
pub fn parse_x_match(args: &FieldTable) -> Result<XMatch, String> {
    let bytes = match args.inner().get("x-match") {
        None => return Ok(XMatch::All),
        Some(AMQPValue::LongString(s)) => s.as_bytes(),
        Some(AMQPValue::ShortString(s)) => s.as_str().as_bytes(),
        Some(other) => {
            return Err(format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                type_name(other),
                erlang_term(other)
            ))
        }
    };
    match bytes {
        b"all" => Ok(XMatch::All),
        b"any" => Ok(XMatch::Any),
        b"all-with-x" => Ok(XMatch::AllWithX),
        b"any-with-x" => Ok(XMatch::AnyWithX),
        other => Err(format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            erlang_binary(other)
        )),
    }
}

/// Whether a message with `message_headers` (`None` = no headers property) matches a headers
/// binding with `binding_args`, combined per `x_match` (parse it once at bind time with
/// [`parse_x_match`]).
///
/// Value equality follows Erlang's `==` on RabbitMQ's decoded values:
/// * all integer types (signed or unsigned, any width) and timestamps compare by numeric value,
///   so `I 5` matches `l 5`, `b 5` and `T 5`;
/// * floats compare with integers and each other by exact numeric value (`d 5.0` matches `I 5`;
///   a 32-bit float is widened, so `f 0.1` does not match `d 0.1`);
/// * long strings and byte arrays (`S`, `x`, and `amq-protocol`'s short string) compare by bytes;
/// * booleans only equal booleans, decimals only decimals (scale and digits, exactly);
/// * arrays and tables compare element-wise, and there the element *types* must also agree (the
///   elements are `{Type, Value}` tuples in Erlang), so `[I 1]` does not match `[l 1]`;
///   an empty array equals an empty table (both are `[]` in Erlang).
pub fn headers_match(
    x_match: XMatch,
    binding_args: &FieldTable,
    message_headers: Option<&FieldTable>,
) -> bool {
    let with_x = matches!(x_match, XMatch::AllWithX | XMatch::AnyWithX);
    let all = matches!(x_match, XMatch::All | XMatch::AllWithX);
    let headers = message_headers.map(FieldTable::inner);
    for (key, want) in binding_args.inner() {
        let key = key.as_str();
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let hit = match headers.and_then(|h| h.get(key)) {
            None => false,
            Some(got) => matches!(want, AMQPValue::Void) || loose_eq(want, got),
        };
        if hit != all {
            // A miss decides `all`, a hit decides `any`.
            return hit;
        }
    }
    all
}

#[derive(Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

fn as_number(v: &AMQPValue) -> Option<Number> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => Number::Int(n.into()),
        AMQPValue::ShortShortUInt(n) => Number::Int(n.into()),
        AMQPValue::ShortInt(n) => Number::Int(n.into()),
        AMQPValue::ShortUInt(n) => Number::Int(n.into()),
        AMQPValue::LongInt(n) => Number::Int(n.into()),
        AMQPValue::LongUInt(n) => Number::Int(n.into()),
        AMQPValue::LongLongInt(n) => Number::Int(n.into()),
        AMQPValue::Timestamp(n) => Number::Int(n.into()),
        AMQPValue::Float(f) => Number::Float(f.into()),
        AMQPValue::Double(f) => Number::Float(f),
        _ => return None,
    })
}

fn number_eq(a: Number, b: Number) -> bool {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x == y,
        (Number::Float(x), Number::Float(y)) => x == y,
        // Exact comparison: the float must be integral and equal (`as` saturates, and every
        // integer here is within i64/u64, far inside the i128 range).
        (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
            f.fract() == 0.0 && f as i128 == i
        }
    }
}

fn as_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        _ => None,
    }
}

/// Erlang `==` on the decoded values, ignoring the field types (top-level header comparison).
fn loose_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
        return number_eq(x, y);
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    match (a, b) {
        (AMQPValue::Boolean(x), AMQPValue::Boolean(y)) => x == y,
        (AMQPValue::DecimalValue(x), AMQPValue::DecimalValue(y)) => {
            x.scale == y.scale && x.value == y.value
        }
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| typed_eq(p, q))
        }
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => {
            let (x, y) = (x.inner(), y.inner());
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && typed_eq(vx, vy))
        }
        // Both decode to the empty list `[]`.
        (AMQPValue::FieldArray(x), AMQPValue::FieldTable(y))
        | (AMQPValue::FieldTable(y), AMQPValue::FieldArray(x)) => {
            x.as_slice().is_empty() && y.inner().is_empty()
        }
        (AMQPValue::Void, AMQPValue::Void) => true,
        _ => false,
    }
}

/// Erlang `==` on `{Type, Value}`: used for array elements and nested table values.
fn typed_eq(a: &AMQPValue, b: &AMQPValue) -> bool {
    type_name(a) == type_name(b) && loose_eq(a, b)
}

/// A binary as Erlang's `~tp` prints it: `<<"text">>` when printable, `<<>>` when empty, else
/// `<<1,2,3>>`.
fn erlang_binary(bytes: &[u8]) -> String {
    let mut out = String::from("<<");
    match std::str::from_utf8(bytes) {
        Ok("") => {}
        Ok(s)
            if !s
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        _ => {
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{b}");
            }
        }
    }
    out.push_str(">>");
    out
}

/// A decoded field value roughly as Erlang's `~tp` prints it (only used in error text).
fn erlang_term(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(f) => format!("{:?}", f64::from(*f)),
        AMQPValue::Double(f) => format!("{f:?}"),
        AMQPValue::DecimalValue(d) => format!("{{{},{}}}", d.scale, d.value),
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) | AMQPValue::ByteArray(_) => {
            erlang_binary(as_bytes(v).unwrap_or_default())
        }
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a
                .as_slice()
                .iter()
                .map(|e| format!("{{{},{}}}", type_name(e), erlang_term(e)))
                .collect();
            format!("[{}]", items.join(","))
        }
        AMQPValue::FieldTable(t) => {
            let items: Vec<String> = t
                .inner()
                .iter()
                .map(|(k, e)| {
                    format!(
                        "{{{},{},{}}}",
                        erlang_binary(k.as_str().as_bytes()),
                        type_name(e),
                        erlang_term(e)
                    )
                })
                .collect();
            format!("[{}]", items.join(","))
        }
        AMQPValue::Void => "undefined".to_owned(),
    }
}

/// The headers exchange's router: each binding's parsed `x-match` rule, tried in turn.
#[derive(Debug, Default)]
pub(super) struct HeadersRouter {
    rules: Vec<(XMatch, FieldTable, super::Destination)>,
}

impl super::Router for HeadersRouter {
    fn add(&mut self, dest: &super::Destination, _key: &str, args: &FieldTable) {
        let xm = parse_x_match(args).unwrap_or(XMatch::All);
        self.rules.push((xm, args.clone(), dest.clone()));
    }

    fn remove(&mut self, dest: &super::Destination, _key: &str, args: &FieldTable) {
        if let Some(i) = self
            .rules
            .iter()
            .position(|(_, a, d)| d == dest && a == args)
        {
            self.rules.remove(i);
        }
    }

    fn route(&self, m: &super::Routable<'_>, out: &mut Vec<super::Destination>) {
        for (xm, args, d) in &self.rules {
            if headers_match(*xm, args, m.headers) {
                out.push(d.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{ByteArray, DecimalValue, FieldArray, LongString, ShortString};
    use super::*;

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    fn x_match(mode: &str) -> FieldTable {
        table(&[("x-match", s(mode))])
    }

    #[test]
    fn parse_x_match_modes() {
        assert_eq!(parse_x_match(&FieldTable::default()), Ok(XMatch::All));
        assert_eq!(parse_x_match(&x_match("all")), Ok(XMatch::All));
        assert_eq!(parse_x_match(&x_match("any")), Ok(XMatch::Any));
        assert_eq!(parse_x_match(&x_match("all-with-x")), Ok(XMatch::AllWithX));
        assert_eq!(parse_x_match(&x_match("any-with-x")), Ok(XMatch::AnyWithX));
        let short = table(&[("x-match", AMQPValue::ShortString("any".into()))]);
        assert_eq!(parse_x_match(&short), Ok(XMatch::Any));
        let other_keys = table(&[("x-match", s("any")), ("a", s("b"))]);
        assert_eq!(parse_x_match(&other_keys), Ok(XMatch::Any));
        assert_eq!(XMatch::default(), XMatch::All);
    }

    #[test]
    fn parse_x_match_errors_use_rabbitmq_text() {
        assert_eq!(
            parse_x_match(&x_match("ALL")),
            Err("Invalid x-match field value <<\"ALL\">>; \
                 expected all, any, all-with-x, or any-with-x"
                .to_owned())
        );
        assert_eq!(
            parse_x_match(&x_match("")),
            Err("Invalid x-match field value <<>>; \
                 expected all, any, all-with-x, or any-with-x"
                .to_owned())
        );
        let bin = table(&[("x-match", AMQPValue::LongString(vec![0u8, 255].into()))]);
        assert_eq!(
            parse_x_match(&bin),
            Err("Invalid x-match field value <<0,255>>; \
                 expected all, any, all-with-x, or any-with-x"
                .to_owned())
        );
        let int = table(&[("x-match", AMQPValue::LongInt(23))]);
        assert_eq!(
            parse_x_match(&int),
            Err("Invalid x-match field type signedint (value 23); expected longstr".to_owned())
        );
        let bytes = table(&[(
            "x-match",
            AMQPValue::ByteArray(ByteArray::from(&b"all"[..])),
        )]);
        assert_eq!(
            parse_x_match(&bytes),
            Err(
                "Invalid x-match field type binary (value <<\"all\">>); expected longstr"
                    .to_owned()
            )
        );
        let void = table(&[("x-match", AMQPValue::Void)]);
        assert_eq!(
            parse_x_match(&void),
            Err("Invalid x-match field type void (value undefined); expected longstr".to_owned())
        );
    }

    #[test]
    fn all_requires_every_argument() {
        let b = table(&[("format", s("pdf")), ("type", s("report"))]);
        let full = table(&[
            ("format", s("pdf")),
            ("type", s("report")),
            ("extra", s("1")),
        ]);
        let partial = table(&[("format", s("pdf"))]);
        let wrong = table(&[("format", s("pdf")), ("type", s("log"))]);
        assert!(headers_match(XMatch::All, &b, Some(&full)));
        assert!(!headers_match(XMatch::All, &b, Some(&partial)));
        assert!(!headers_match(XMatch::All, &b, Some(&wrong)));
        assert!(!headers_match(
            XMatch::All,
            &b,
            Some(&FieldTable::default())
        ));
        assert!(!headers_match(XMatch::All, &b, None));
    }

    #[test]
    fn any_requires_one_argument() {
        let b = table(&[("format", s("pdf")), ("type", s("report"))]);
        let one = table(&[("format", s("zip")), ("type", s("report"))]);
        let none = table(&[("format", s("zip")), ("type", s("log"))]);
        let other = table(&[("colour", s("red"))]);
        assert!(headers_match(XMatch::Any, &b, Some(&one)));
        assert!(!headers_match(XMatch::Any, &b, Some(&none)));
        assert!(!headers_match(XMatch::Any, &b, Some(&other)));
        assert!(!headers_match(XMatch::Any, &b, None));
    }

    #[test]
    fn no_compared_arguments() {
        let only_x = table(&[("x-match", s("all")), ("x-foo", s("bar"))]);
        let h = table(&[("a", s("b"))]);
        for headers in [None, Some(&h)] {
            assert!(headers_match(XMatch::All, &FieldTable::default(), headers));
            assert!(headers_match(XMatch::All, &only_x, headers));
            assert!(!headers_match(XMatch::Any, &FieldTable::default(), headers));
            assert!(!headers_match(XMatch::Any, &only_x, headers));
        }
        // Under -with-x, `x-foo` counts (and is absent here) but `x-match` still does not.
        assert!(!headers_match(XMatch::AllWithX, &only_x, Some(&h)));
        let x_match_only = x_match("all-with-x");
        assert!(headers_match(XMatch::AllWithX, &x_match_only, None));
        assert!(!headers_match(XMatch::AnyWithX, &x_match_only, None));
    }

    #[test]
    fn x_arguments_only_with_x_forms() {
        let b = table(&[("x-match", s("all")), ("x-tenant", s("t1")), ("k", s("v"))]);
        let plain = table(&[("k", s("v"))]);
        let with_x = table(&[("k", s("v")), ("x-tenant", s("t1"))]);
        let wrong_x = table(&[("k", s("v")), ("x-tenant", s("t2"))]);
        assert!(headers_match(XMatch::All, &b, Some(&plain)));
        assert!(headers_match(XMatch::All, &b, Some(&wrong_x)));
        assert!(!headers_match(XMatch::AllWithX, &b, Some(&plain)));
        assert!(headers_match(XMatch::AllWithX, &b, Some(&with_x)));
        assert!(!headers_match(XMatch::AllWithX, &b, Some(&wrong_x)));

        let only_x = table(&[("x-tenant", s("t1"))]);
        let x_hdr = table(&[("x-tenant", s("t1"))]);
        assert!(!headers_match(XMatch::Any, &only_x, Some(&x_hdr)));
        assert!(headers_match(XMatch::AnyWithX, &only_x, Some(&x_hdr)));
        // The message's own `x-match` header is never compared with the binding's.
        let b = table(&[("x-match", s("any-with-x"))]);
        let h = table(&[("x-match", s("any-with-x"))]);
        assert!(!headers_match(XMatch::AnyWithX, &b, Some(&h)));
    }

    #[test]
    fn void_argument_means_present() {
        let b = table(&[("flag", AMQPValue::Void)]);
        for v in [s("anything"), AMQPValue::LongInt(0), AMQPValue::Void] {
            let h = table(&[("flag", v)]);
            assert!(headers_match(XMatch::All, &b, Some(&h)));
            assert!(headers_match(XMatch::Any, &b, Some(&h)));
        }
        let h = table(&[("other", s("x"))]);
        assert!(!headers_match(XMatch::All, &b, Some(&h)));
        assert!(!headers_match(XMatch::Any, &b, Some(&h)));
        // A void header does not equal a non-void argument.
        let b = table(&[("flag", s(""))]);
        let h = table(&[("flag", AMQPValue::Void)]);
        assert!(!headers_match(XMatch::All, &b, Some(&h)));
    }

    fn eq(a: AMQPValue, b: AMQPValue) -> bool {
        let bind = table(&[("k", a)]);
        let hdrs = table(&[("k", b)]);
        headers_match(XMatch::All, &bind, Some(&hdrs))
    }

    #[test]
    fn numbers_compare_by_value_across_types() {
        let five = [
            AMQPValue::ShortShortInt(5),
            AMQPValue::ShortShortUInt(5),
            AMQPValue::ShortInt(5),
            AMQPValue::ShortUInt(5),
            AMQPValue::LongInt(5),
            AMQPValue::LongUInt(5),
            AMQPValue::LongLongInt(5),
            AMQPValue::Timestamp(5),
            AMQPValue::Float(5.0),
            AMQPValue::Double(5.0),
        ];
        for a in &five {
            for b in &five {
                assert!(eq(a.clone(), b.clone()), "{a:?} == {b:?}");
            }
            assert!(!eq(a.clone(), AMQPValue::LongInt(6)));
            assert!(!eq(a.clone(), AMQPValue::Double(5.5)));
        }
        assert!(eq(AMQPValue::LongInt(-1), AMQPValue::LongLongInt(-1)));
        assert!(!eq(AMQPValue::LongInt(-1), AMQPValue::LongUInt(u32::MAX)));
        assert!(eq(
            AMQPValue::Timestamp(u64::MAX),
            AMQPValue::Timestamp(u64::MAX)
        ));
        assert!(!eq(
            AMQPValue::Timestamp(u64::MAX),
            AMQPValue::LongLongInt(-1)
        ));
        assert!(eq(AMQPValue::Float(1.5), AMQPValue::Double(1.5)));
        assert!(!eq(AMQPValue::Float(0.1), AMQPValue::Double(0.1)));
        assert!(!eq(
            AMQPValue::Double(f64::NAN),
            AMQPValue::Double(f64::NAN)
        ));
        assert!(!eq(
            AMQPValue::Double(f64::INFINITY),
            AMQPValue::LongLongInt(i64::MAX)
        ));
    }

    #[test]
    fn other_types_compare_within_kind() {
        assert!(eq(s("abc"), AMQPValue::ShortString("abc".into())));
        assert!(eq(
            s("abc"),
            AMQPValue::ByteArray(ByteArray::from(&b"abc"[..]))
        ));
        assert!(!eq(s("abc"), s("abd")));
        assert!(!eq(s("5"), AMQPValue::LongInt(5)));
        assert!(eq(AMQPValue::Boolean(true), AMQPValue::Boolean(true)));
        assert!(!eq(AMQPValue::Boolean(true), AMQPValue::Boolean(false)));
        assert!(!eq(AMQPValue::Boolean(true), AMQPValue::LongInt(1)));
        let dec = |scale, value| AMQPValue::DecimalValue(DecimalValue { scale, value });
        assert!(eq(dec(2, 150), dec(2, 150)));
        assert!(!eq(dec(2, 150), dec(1, 15)));
        assert!(!eq(dec(0, 5), AMQPValue::LongInt(5)));
    }

    #[test]
    fn nested_values_compare_with_types() {
        let arr = |v: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(v));
        assert!(eq(
            arr(vec![AMQPValue::LongInt(1), s("a")]),
            arr(vec![AMQPValue::LongInt(1), s("a")])
        ));
        assert!(!eq(
            arr(vec![AMQPValue::LongInt(1)]),
            arr(vec![AMQPValue::LongLongInt(1)])
        ));
        assert!(!eq(arr(vec![AMQPValue::LongInt(1)]), arr(vec![])));
        assert!(!eq(
            arr(vec![s("a")]),
            arr(vec![AMQPValue::ByteArray(b"a".to_vec().into())])
        ));
        let inner = |v: AMQPValue| AMQPValue::FieldTable(table(&[("n", v)]));
        assert!(eq(
            inner(AMQPValue::LongInt(1)),
            inner(AMQPValue::LongInt(1))
        ));
        assert!(!eq(
            inner(AMQPValue::LongInt(1)),
            inner(AMQPValue::ShortInt(1))
        ));
        assert!(!eq(
            inner(AMQPValue::LongInt(1)),
            AMQPValue::FieldTable(table(&[("m", AMQPValue::LongInt(1))]))
        ));
        // `[] == []` in Erlang: an empty array equals an empty table.
        assert!(eq(
            arr(vec![]),
            AMQPValue::FieldTable(FieldTable::default())
        ));
        assert!(!eq(arr(vec![]), s("")));
    }
}
