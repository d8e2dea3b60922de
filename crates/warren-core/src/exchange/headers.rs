//! Placeholder headers matcher; replaced by the full implementation.
use super::proto::{AMQPValue, FieldTable};
/// x-match mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XMatch {
    /// all
    All,
    /// any
    Any,
    /// all-with-x
    AllWithX,
    /// any-with-x
    AnyWithX,
}
/// Parses x-match.
pub fn parse_x_match(args: &FieldTable) -> Result<XMatch, String> {
    match args.inner().get("x-match") {
        None => Ok(XMatch::All),
        Some(AMQPValue::LongString(s)) => match s.as_bytes() {
            b"all" => Ok(XMatch::All),
            b"any" => Ok(XMatch::Any),
            b"all-with-x" => Ok(XMatch::AllWithX),
            b"any-with-x" => Ok(XMatch::AnyWithX),
            _ => Err("expected all, any, all-with-x, or any-with-x".into()),
        },
        _ => Err("expected all, any, all-with-x, or any-with-x".into()),
    }
}
/// Matches.
pub fn headers_match(x: XMatch, binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let with_x = matches!(x, XMatch::AllWithX | XMatch::AnyWithX);
    let all = matches!(x, XMatch::All | XMatch::AllWithX);
    let empty = FieldTable::default();
    let h = headers.unwrap_or(&empty).inner();
    let mut any_hit = false;
    for (k, v) in binding.inner() {
        if k.as_str() == "x-match" || (!with_x && k.as_str().starts_with("x-")) {
            continue;
        }
        let hit = match (v, h.get(k.as_str())) {
            (_, None) => false,
            (AMQPValue::Void, Some(_)) => true,
            (v, Some(hv)) => v == hv,
        };
        if all && !hit {
            return false;
        }
        any_hit |= hit;
    }
    all || any_hit
}
