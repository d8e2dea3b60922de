//! RabbitMQ's list query parameters (`page`, `page_size`, `name`, `use_regex`, `sort`,
//! `sort_reverse`, `columns`, `disable_stats`), applied to any list, with RabbitMQ's error
//! names and texts for bad values.
//!
//! A list is of [`Item`]s: the big lists (queues, exchanges, bindings, connections) have items
//! that serialise themselves straight from the broker's views, so the common requests (the
//! whole list, or a page, in the default order or by name) never build a `serde_json::Value`
//! tree; only a sort on another field or `columns` turns the items into trees first. The
//! answer ([`Listing`]) is the JSON text, written on the blocking pool by the big lists.
//! `pagination=false` (sent by KEDA) is ignored, as RabbitMQ ignores it: `page` alone asks for
//! the paginated shape.

use std::cmp::Ordering;
use std::collections::HashMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::pick;
use crate::error::{ApiError, ApiResult};

/// One object of a list.
pub(crate) trait Item: Serialize {
    /// Its `name` (`None`: it has none, as bindings).
    fn name(&self) -> Option<&str>;
    /// Its `vhost`.
    fn vhost(&self) -> Option<&str>;
    /// Its JSON tree, for a sort on another field or `columns`.
    fn into_tree(self) -> Value
    where
        Self: Sized,
    {
        serde_json::to_value(&self).unwrap_or(Value::Null)
    }
    /// Whether `disable_stats=true` strips the statistics from its tree (trees built with
    /// them); items that leave them out themselves say no.
    const STRIP_STATS: bool = false;
}

impl Item for Value {
    fn name(&self) -> Option<&str> {
        self.get("name").and_then(Value::as_str)
    }
    fn vhost(&self) -> Option<&str> {
        self.get("vhost").and_then(Value::as_str)
    }
    fn into_tree(self) -> Value {
        self
    }
    const STRIP_STATS: bool = true;
}

/// A JSON answer already written out.
#[derive(Debug)]
pub(crate) struct Listing(pub Vec<u8>);

impl Listing {
    /// `v` written out.
    pub(crate) fn of<T: Serialize + ?Sized>(v: &T) -> ApiResult<Self> {
        Self::sized(v, 128)
    }

    /// `v` written out into a buffer of `capacity` bytes to begin with (a big list grows it
    /// once or not at all, instead of a doubling per power of two).
    pub(crate) fn sized<T: Serialize + ?Sized>(v: &T, capacity: usize) -> ApiResult<Self> {
        let mut out = Vec::with_capacity(capacity);
        serde_json::to_writer(&mut out, v)
            .map(|()| Listing(out))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    format!("JSON encoding failed: {e}"),
                )
            })
    }
}

impl IntoResponse for Listing {
    fn into_response(self) -> Response {
        let mut r = self.0.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// RabbitMQ's largest `page_size`.
const MAX_PAGE_SIZE: u64 = 500;

fn dotted<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn cmp(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

fn insert_path(out: &mut Map<String, Value>, parts: &[&str], v: Value) {
    match parts {
        [] => {}
        [last] => {
            out.insert((*last).to_string(), v);
        }
        [first, rest @ ..] => {
            let e = out.entry((*first).to_string()).or_insert_with(|| json!({}));
            if let Some(m) = e.as_object_mut() {
                insert_path(m, rest, v);
            }
        }
    }
}

fn keep_columns(item: &Value, cols: &[&str]) -> Value {
    let mut out = Map::new();
    for c in cols {
        if let Some(v) = dotted(item, c) {
            let parts: Vec<&str> = c.split('.').collect();
            insert_path(&mut out, &parts, v.clone());
        }
    }
    Value::Object(out)
}

fn invalid_pagination(page: &str, page_size: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_pagination_parameters",
        format!("Invalid pagination parameters: page number {page}, page size {page_size}"),
    )
}

/// A pagination parameter: not a number is RabbitMQ's `Pagination parameters are invalid`.
fn number(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<u64>> {
    match q.get(key) {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request("Pagination parameters are invalid")),
    }
}

/// `disable_stats=true`: the objects without their statistics (counts, rates, stats).
fn without_stats(item: Value) -> Value {
    match item {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| {
                    !(k.starts_with("message")
                        || k.starts_with("consumer")
                        || k.ends_with("_details"))
                })
                .collect(),
        ),
        other => other,
    }
}

/// A list answer: the bare list, or a page of it with RabbitMQ's counts.
enum Shaped<U> {
    List(Vec<U>),
    Page(Page<U>),
}

impl<U> Shaped<U> {
    /// The same answer with each item mapped.
    fn map<V>(self, f: impl FnMut(U) -> V) -> Shaped<V> {
        match self {
            Shaped::List(v) => Shaped::List(v.into_iter().map(f).collect()),
            Shaped::Page(p) => Shaped::Page(Page {
                filtered_count: p.filtered_count,
                item_count: p.item_count,
                items: p.items.into_iter().map(f).collect(),
                page: p.page,
                page_count: p.page_count,
                page_size: p.page_size,
                total_count: p.total_count,
            }),
        }
    }

    /// Items in the answer.
    fn len(&self) -> usize {
        match self {
            Shaped::List(v) => v.len(),
            Shaped::Page(p) => p.items.len(),
        }
    }
}

/// RabbitMQ's paginated answer (fields in the order the `Value` answers had them).
#[derive(Serialize)]
struct Page<U> {
    filtered_count: u64,
    item_count: usize,
    items: Vec<U>,
    page: u64,
    page_count: u64,
    page_size: u64,
    total_count: usize,
}

impl<U: Serialize> Serialize for Shaped<U> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shaped::List(v) => v.serialize(s),
            Shaped::Page(p) => p.serialize(s),
        }
    }
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true")
}

/// Whether `item` passes the `name` filter (a case-insensitive substring, or with
/// `use_regex=true` a case-insensitive regular expression, as RabbitMQ's `caseless`).
struct NameFilter {
    needle: String,
    re: Option<regex::Regex>,
}

impl NameFilter {
    fn of(q: &HashMap<String, String>) -> ApiResult<Option<Self>> {
        let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let re = if truthy(q, "use_regex") {
            Some(
                regex::RegexBuilder::new(name)
                    .case_insensitive(true)
                    .build()
                    .map_err(|_| ApiError::bad_request("Pagination parameters are invalid"))?,
            )
        } else {
            None
        };
        Ok(Some(Self {
            needle: name.to_lowercase(),
            re,
        }))
    }

    fn passes(&self, name: Option<&str>) -> bool {
        match (name, &self.re) {
            (None, _) => false,
            (Some(n), Some(re)) => re.is_match(n),
            (Some(n), None) => n.to_lowercase().contains(&self.needle),
        }
    }
}

/// Pages `items` if `page` is given (RabbitMQ's checks and errors), else the bare list.
fn paginate<U>(
    items: Vec<U>,
    total_count: usize,
    q: &HashMap<String, String>,
) -> ApiResult<Shaped<U>> {
    if !q.contains_key("page") {
        return Ok(Shaped::List(items));
    }
    let page = number(q, "page")?.unwrap_or(1);
    let size_given = number(q, "page_size")?;
    let page_size = size_given.unwrap_or(100);
    let size_text = size_given.map_or("undefined".to_string(), |n| n.to_string());
    if page == 0 {
        return Err(invalid_pagination("0", &size_text));
    }
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(invalid_pagination(&page.to_string(), &size_text));
    }
    let filtered_count = items.len() as u64;
    let page_count = filtered_count.div_ceil(page_size);
    if page > page_count.max(1) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!(
                "Page out of range, page: {page} page size: {page_size}, len: {filtered_count}"
            ),
        ));
    }
    let start = usize::try_from((page - 1) * page_size).unwrap_or(usize::MAX);
    let page_items: Vec<U> = items
        .into_iter()
        .skip(start)
        .take(usize::try_from(page_size).unwrap_or(usize::MAX))
        .collect();
    Ok(Shaped::Page(Page {
        filtered_count,
        item_count: page_items.len(),
        items: page_items,
        page,
        page_count,
        page_size,
        total_count,
    }))
}

/// The sort RabbitMQ applies when it is on `vhost` or `name`: the `sort` field first, then
/// its default `vhost`, `name` (`Some(true)`: by name first). `None`: a sort on another field.
fn basic_sort(q: &HashMap<String, String>) -> Option<bool> {
    match q.get("sort").map(String::as_str) {
        None | Some("") | Some("vhost") => Some(false),
        Some("name") => Some(true),
        Some(_) => None,
    }
}

/// `items` in the order of their keys (stable; each key taken out once per item).
fn sorted_by<U, K>(
    items: Vec<U>,
    key: impl Fn(&U) -> K,
    cmp: impl Fn(&K, &K) -> Ordering,
) -> Vec<U> {
    let order: Vec<usize> = {
        let keys: Vec<K> = items.iter().map(key).collect();
        let mut idx: Vec<usize> = (0..items.len()).collect();
        idx.sort_by(|&a, &b| cmp(&keys[a], &keys[b]));
        idx
    };
    let mut slots: Vec<Option<U>> = items.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

fn sorted_basic<T: Item>(items: Vec<T>, by_name: bool) -> Vec<T> {
    sorted_by(
        items,
        |i| {
            if by_name {
                (i.name().map(str::to_owned), i.vhost().map(str::to_owned))
            } else {
                (i.vhost().map(str::to_owned), i.name().map(str::to_owned))
            }
        },
        |a, b| a.cmp(b),
    )
}

/// What [`engine`] made of a list: still its items, or their trees.
enum Out<T> {
    Items(Shaped<T>),
    Trees(Shaped<Value>),
}

/// Filters, sorts, trims and (if `page` is given) paginates `items` as RabbitMQ's
/// `rabbit_mgmt_util` does. Without `page` the answer is the bare list. The name filter is
/// applied with or without `page`.
fn engine<T: Item>(mut items: Vec<T>, q: &HashMap<String, String>) -> ApiResult<Out<T>> {
    let total_count = items.len();
    if let Some(f) = NameFilter::of(q)? {
        items.retain(|i| f.passes(i.name()));
    }
    let strip = T::STRIP_STATS && truthy(q, "disable_stats");
    let columns = q.get("columns").filter(|c| !c.is_empty());
    let reverse = truthy(q, "sort_reverse");
    let basic = basic_sort(q);
    if strip {
        return trees_engine(items, q, basic, columns, reverse, total_count);
    }
    let mut items = match basic {
        Some(by_name) => sorted_basic(items, by_name),
        None => {
            // One key per item, picked out without building the item's tree.
            let key = q.get("sort").map_or("", String::as_str);
            sorted_by(
                items,
                |i| {
                    let mut v = pick::pick(i, &[key, "vhost", "name"]).into_iter();
                    [v.next().flatten(), v.next().flatten(), v.next().flatten()]
                },
                cmp3,
            )
        }
    };
    if reverse {
        items.reverse();
    }
    let page = paginate(items, total_count, q)?;
    Ok(match columns {
        None => Out::Items(page),
        Some(cols) => {
            // Only the page's items, and only their columns, become trees.
            let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
            Out::Trees(page.map(|i| {
                let mut out = Map::new();
                for (c, v) in cols.iter().zip(pick::pick(&i, &cols)) {
                    if let Some(v) = v {
                        let parts: Vec<&str> = c.split('.').collect();
                        insert_path(&mut out, &parts, v);
                    }
                }
                Value::Object(out)
            }))
        }
    })
}

fn cmp3(a: &[Option<Value>; 3], b: &[Option<Value>; 3]) -> Ordering {
    cmp(a[0].as_ref(), b[0].as_ref())
        .then_with(|| cmp(a[1].as_ref(), b[1].as_ref()))
        .then_with(|| cmp(a[2].as_ref(), b[2].as_ref()))
}

/// `disable_stats=true` on trees (the small lists built as `Value`s): sorted, then every
/// item's tree is stripped of its statistics and trimmed to `columns`.
fn trees_engine<T: Item>(
    items: Vec<T>,
    q: &HashMap<String, String>,
    basic: Option<bool>,
    columns: Option<&String>,
    reverse: bool,
    total_count: usize,
) -> ApiResult<Out<T>> {
    let trees: Vec<Value> = items.into_iter().map(Item::into_tree).collect();
    let mut trees = match basic {
        Some(by_name) => sorted_basic(trees, by_name),
        None => {
            let key = q.get("sort").map_or("", String::as_str);
            sorted_by(
                trees,
                |i| {
                    [
                        dotted(i, key).cloned(),
                        i.get("vhost").cloned(),
                        i.get("name").cloned(),
                    ]
                },
                cmp3,
            )
        }
    };
    if reverse {
        trees.reverse();
    }
    trees = trees.into_iter().map(without_stats).collect();
    if let Some(cols) = columns {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        trees = trees.iter().map(|i| keep_columns(i, &cols)).collect();
    }
    Ok(Out::Trees(paginate(trees, total_count, q)?))
}

/// The list answer for `items`, written out (call it on the blocking pool for a big list:
/// see `common::off_loop`).
pub(crate) fn list<T: Item>(items: Vec<T>, q: &HashMap<String, String>) -> ApiResult<Listing> {
    // About a queue's JSON with statistics (1.1 KB); smaller items waste a little room.
    const ITEM_BYTES: usize = 1200;
    match engine(items, q)? {
        Out::Items(s) => Listing::sized(&s, s.len() * ITEM_BYTES + 128),
        Out::Trees(s) => Listing::sized(&s, s.len() * ITEM_BYTES + 128),
    }
}

/// The list answer for a list of trees, as a tree (the small lists).
pub(crate) fn apply(items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Value> {
    let shaped = match engine(items, q)? {
        Out::Items(s) | Out::Trees(s) => s,
    };
    Ok(match shaped {
        Shaped::List(v) => Value::Array(v),
        Shaped::Page(p) => json!({
            "filtered_count": p.filtered_count,
            "item_count": p.item_count,
            "items": p.items,
            "page": p.page,
            "page_count": p.page_count,
            "page_size": p.page_size,
            "total_count": p.total_count,
        }),
    })
}
