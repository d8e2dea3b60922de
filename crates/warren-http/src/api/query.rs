//! RabbitMQ's list query parameters (`page`, `page_size`, `name`, `use_regex`, `sort`,
//! `sort_reverse`, `columns`), applied to any list of JSON objects.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

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

fn page_param(q: &HashMap<String, String>, key: &str, default: u64) -> ApiResult<u64> {
    match q.get(key) {
        None => Ok(default),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{key} must be a positive integer"
            ))),
        },
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
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
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
    let sort = q.get("sort").filter(|s| !s.is_empty()).map(String::as_str);
    let key = sort.unwrap_or("name");
    items.sort_by(|a, b| cmp(dotted(a, key), dotted(b, key)));
    if truthy("sort_reverse") {
        items.reverse();
    }
    if let Some(cols) = q.get("columns").filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        items = items.iter().map(|i| keep_columns(i, &cols)).collect();
    }
    if !q.contains_key("page") {
        return Ok(Value::Array(items));
    }
    let page = page_param(q, "page", 1)?;
    let page_size = page_param(q, "page_size", 100)?;
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "page_size ({page_size}) must be less than {MAX_PAGE_SIZE}"
        )));
    }
    let filtered_count = items.len() as u64;
    let page_count = filtered_count.div_ceil(page_size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request(format!(
            "page ({page}) must be less than or equal to page_count ({page_count})"
        )));
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
