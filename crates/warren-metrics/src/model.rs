//! The exposition model: metric families with their samples, encoded with prometheus-client.
//!
//! A scrape builds a `Vec<MetricFamily>` from a [`crate::snapshot::Snapshot`] and hands it to
//! prometheus-client as one [`Collector`], whose text encoder writes OpenMetrics. RabbitMQ
//! serves the Prometheus text format 0.0.4, which prometheus-client cannot write; [`to_text_004`]
//! is the narrowest conversion of its output (only `# TYPE` and `# EOF` lines differ).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A family's type, as rabbitmq_prometheus declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter (its name in the table ends in `_total`).
    Counter,
    /// A gauge.
    Gauge,
    /// `untyped` in RabbitMQ (`unknown` in OpenMetrics): info-style and alarm families.
    Untyped,
}

/// Label pairs of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// One metric family and its samples.
#[derive(Debug, Clone)]
pub struct MetricFamily {
    /// Full name as RabbitMQ writes it (counters with their `_total`).
    pub name: String,
    /// HELP text, verbatim from rabbitmq_prometheus 3.10.8.
    pub help: &'static str,
    /// Type.
    pub kind: Kind,
    /// Samples (no samples: the family is still declared, as RabbitMQ does).
    pub samples: Vec<(Labels, i64)>,
}

impl MetricFamily {
    /// An empty family.
    pub fn new(name: String, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }
}

/// The families of one scrape, as a prometheus-client collector.
#[derive(Debug)]
struct Families(Vec<MetricFamily>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let (name, ty) = match f.kind {
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(&f.name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (f.name.as_str(), MetricType::Gauge),
                Kind::Untyped => (f.name.as_str(), MetricType::Unknown),
            };
            let mut m = encoder.encode_descriptor(name, f.help, None, ty)?;
            // An unlabelled sample goes through the descriptor's own encoder (a family
            // with an empty label set would be written `name{} v`).
            if let [(labels, v)] = f.samples.as_slice() {
                if labels.is_empty() {
                    encode_value(f.kind, *v, m)?;
                    continue;
                }
            }
            for (labels, v) in &f.samples {
                if labels.iter().any(|(_, v)| needs_escape(v)) {
                    let escaped: Labels = labels.iter().map(|(k, v)| (*k, escape(v))).collect();
                    encode_value(f.kind, *v, m.encode_family(&escaped)?)?;
                } else {
                    encode_value(f.kind, *v, m.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// prometheus-client writes label values verbatim; queue and exchange names may hold any
/// character, so backslashes, `"` and newlines are escaped as both text formats require.
fn needs_escape(v: &str) -> bool {
    v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n'))
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn encode_value(kind: Kind, v: i64, enc: MetricEncoder) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(u64::try_from(v).unwrap_or(0)).encode(enc),
        Kind::Gauge | Kind::Untyped => ConstGauge::new(v).encode(enc),
    }
}

/// OpenMetrics text of `families` (ends with `# EOF`).
pub fn encode_openmetrics(families: Vec<MetricFamily>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus text format 0.0.4, the way
/// rabbitmq_prometheus writes it: `# TYPE` then `# HELP`, counters declared under their
/// `_total` name, `unknown` written `untyped`, no `# EOF`. Sample lines are the same in both.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (name_out, ty_out) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            out.push_str("# TYPE ");
            out.push_str(&name_out);
            out.push(' ');
            out.push_str(ty_out);
            out.push('\n');
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|r| r.strip_prefix(name))
                    .unwrap_or("");
                out.push_str("# HELP ");
                out.push_str(&name_out);
                out.push_str(text);
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_untyped_in_both_formats() {
        let mut c = MetricFamily::new("x_opened_total".into(), "Opened", Kind::Counter);
        c.samples.push((vec![], 3));
        let mut g = MetricFamily::new("x_queue".into(), "Depth", Kind::Gauge);
        g.samples
            .push((vec![("vhost", "/".into()), ("queue", "a\"b".into())], 7));
        let mut u = MetricFamily::new("x_info".into(), "Info", Kind::Untyped);
        u.samples.push((vec![("v", "1".into())], 1));
        let om = encode_openmetrics(vec![c, g, u]).expect("encodes");
        assert!(om.contains("# TYPE x_opened counter\n"), "{om}");
        assert!(om.contains("x_opened_total 3\n"), "{om}");
        assert!(
            om.contains("x_queue{vhost=\"/\",queue=\"a\\\"b\"} 7\n"),
            "{om}"
        );
        assert!(om.contains("# TYPE x_info unknown\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let t = to_text_004(&om);
        assert!(t.contains("# TYPE x_opened_total counter\n"), "{t}");
        assert!(t.contains("# TYPE x_info untyped\n"), "{t}");
        assert!(
            t.contains("# TYPE x_opened_total counter\n# HELP x_opened_total Opened\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE x_queue gauge\n# HELP x_queue Depth\n"),
            "{t}"
        );
        assert!(!t.contains("# EOF"), "{t}");
    }
}
