//! RabbitMQ's list query parameters (`page`, `page_size`, `name`, `use_regex`, `sort`,
//! `sort_reverse`, `columns`, `disable_stats`), applied to any list of JSON objects, with
//! RabbitMQ's error names and texts for bad values.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use axum::http::StatusCode;

use crate::error::{ApiError, ApiResult};

/// RabbitMQ's largest `page_size`.
const MAX_PAGE_SIZE: u64 = 500;

fn dotted<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn cmp(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
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

/// Filters, sorts, trims and (if `page` is given) paginates `items` as RabbitMQ's
/// `rabbit_mgmt_util` does. Without `page` the answer is the bare list.
pub(crate) fn apply(mut items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult<Value> {
    let total_count = items.len();
    let truthy = |k: &str| q.get(k).is_some_and(|v| v == "true");
    if let Some(name) = q.get("name").filter(|n| !n.is_empty()) {
        if truthy("use_regex") {
            let re = regex::Regex::new(name)
                .map_err(|_| ApiError::bad_request("Pagination parameters are invalid"))?;
            items.retain(|i| {
                i.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| re.is_match(n))
            });
        } else {
            let needle = name.to_lowercase();
            items.retain(|i| {
                i.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
            });
        }
    }
    // RabbitMQ's default order is by vhost, then name.
    // The keys are taken out once per item (a comparator that looked them up in each object's
    // map cost most of a 10,000-queue listing).
    let sort_key = q.get("sort").filter(|s| !s.is_empty());
    let mut keyed: Vec<([Option<Value>; 2], Value)> = items
        .into_iter()
        .map(|i| {
            let k = match sort_key {
                Some(key) => [dotted(&i, key).cloned(), None],
                None => [i.get("vhost").cloned(), i.get("name").cloned()],
            };
            (k, i)
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        cmp(a[0].as_ref(), b[0].as_ref()).then_with(|| cmp(a[1].as_ref(), b[1].as_ref()))
    });
    let mut items: Vec<Value> = keyed.into_iter().map(|(_, i)| i).collect();
    if truthy("sort_reverse") {
        items.reverse();
    }
    if truthy("disable_stats") {
        items = items.into_iter().map(without_stats).collect();
    }
    if let Some(cols) = q.get("columns").filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        items = items.iter().map(|i| keep_columns(i, &cols)).collect();
    }
    if !q.contains_key("page") {
        return Ok(Value::Array(items));
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
    let start = ((page - 1) * page_size) as usize;
    let page_items: Vec<Value> = items
        .into_iter()
        .skip(start)
        .take(page_size as usize)
        .collect();
    Ok(json!({
        "filtered_count": filtered_count,
        "item_count": page_items.len(),
        "items": page_items,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total_count,
    }))
}
