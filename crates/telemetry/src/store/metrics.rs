//! The metric store: the latest data point of each series (service, name, attributes), evicted
//! least recently updated first.

use super::model::{Attributes, ENTRY_OVERHEAD, attributes, attributes_bytes, f64_to_json};
use super::traces::MAX_LIMIT;
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::sync::Arc;

/// Filters for [`Store::metrics`](super::Store::metrics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricQuery {
    /// Only series of this metric.
    pub name: Option<String>,
    /// Only series of this service.
    pub service: Option<String>,
}

/// Metric data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
}

/// Latest point of a histogram series.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistogramView {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// One more count than bounds (the last bucket is unbounded above).
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<f64>,
}

/// One side of an exponential histogram.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpBucketsView {
    pub offset: i32,
    pub bucket_counts: Vec<u64>,
}

/// Latest point of an exponential histogram series.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExponentialHistogramView {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub scale: i32,
    pub zero_count: u64,
    pub positive: Option<ExpBucketsView>,
    pub negative: Option<ExpBucketsView>,
}

/// One quantile of a summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantileView {
    pub quantile: f64,
    pub value: f64,
}

/// Latest point of a summary series.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryView {
    pub count: u64,
    pub sum: f64,
    pub quantiles: Vec<QuantileView>,
}

/// The latest point of one series.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    pub name: String,
    pub description: String,
    pub unit: String,
    pub kind: MetricKind,
    #[serde(serialize_with = "super::ser_arc_str")]
    pub service: Arc<str>,
    pub attributes: Attributes,
    /// Gauge or sum value (integers stay integers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Sums only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monotonic: Option<bool>,
    /// `delta` or `cumulative` for sums and histograms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporality: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histogram: Option<HistogramView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exponential_histogram: Option<ExponentialHistogramView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<SummaryView>,
    #[serde(serialize_with = "super::ser_u64_str")]
    pub start_time_unix_nano: u64,
    #[serde(serialize_with = "super::ser_u64_str")]
    pub time_unix_nano: u64,
}

impl MetricView {
    fn estimated_bytes(&self) -> usize {
        size_of::<MetricView>()
            + self.name.capacity()
            + self.description.capacity()
            + self.unit.capacity()
            + attributes_bytes(&self.attributes)
            + self.histogram.as_ref().map_or(0, |h| {
                8 * (h.bucket_counts.capacity() + h.explicit_bounds.capacity())
            })
            + self.exponential_histogram.as_ref().map_or(0, |h| {
                [&h.positive, &h.negative]
                    .iter()
                    .filter_map(|b| b.as_ref())
                    .map(|b| 8 * b.bucket_counts.capacity())
                    .sum()
            })
            + self
                .summary
                .as_ref()
                .map_or(0, |s| size_of::<QuantileView>() * s.quantiles.capacity())
    }

    /// The series key: service, name and attributes (sorted by key).
    fn series_key(&self) -> String {
        let mut attrs: Vec<(&String, &Value)> = self.attributes.iter().collect();
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        let mut key = format!("{}\u{0}{}", self.service, self.name);
        for (k, v) in attrs {
            key.push('\u{0}');
            key.push_str(k);
            key.push('=');
            key.push_str(&v.to_string());
        }
        key
    }
}

fn temporality(t: i32) -> Option<&'static str> {
    match t {
        1 => Some("delta"),
        2 => Some("cumulative"),
        _ => None,
    }
}

fn buckets(b: &Option<Buckets>) -> Option<ExpBucketsView> {
    b.as_ref().map(|b| ExpBucketsView {
        offset: b.offset,
        bucket_counts: b.bucket_counts.clone(),
    })
}

/// One view per data point of `m`.
pub(crate) fn points(m: &Metric, service: &Arc<str>) -> Vec<MetricView> {
    let base = |kind, attrs: &[_], start, time| MetricView {
        name: m.name.clone(),
        description: m.description.clone(),
        unit: m.unit.clone(),
        kind,
        service: service.clone(),
        attributes: attributes(attrs),
        value: None,
        monotonic: None,
        temporality: None,
        histogram: None,
        exponential_histogram: None,
        summary: None,
        start_time_unix_nano: start,
        time_unix_nano: time,
    };
    let number = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsDouble(d)) => Some(f64_to_json(*d)),
        Some(number_data_point::Value::AsInt(i)) => Some(Value::Number((*i).into())),
        None => None,
    };
    match &m.data {
        None => Vec::new(),
        Some(Data::Gauge(g)) => g
            .data_points
            .iter()
            .map(|p| MetricView {
                value: number(&p.value),
                ..base(
                    MetricKind::Gauge,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                )
            })
            .collect(),
        Some(Data::Sum(s)) => s
            .data_points
            .iter()
            .map(|p| MetricView {
                value: number(&p.value),
                monotonic: Some(s.is_monotonic),
                temporality: temporality(s.aggregation_temporality),
                ..base(
                    MetricKind::Sum,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                )
            })
            .collect(),
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| MetricView {
                temporality: temporality(h.aggregation_temporality),
                histogram: Some(HistogramView {
                    count: p.count,
                    sum: p.sum,
                    min: p.min,
                    max: p.max,
                    bucket_counts: p.bucket_counts.clone(),
                    explicit_bounds: p.explicit_bounds.clone(),
                }),
                ..base(
                    MetricKind::Histogram,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                )
            })
            .collect(),
        Some(Data::ExponentialHistogram(h)) => h
            .data_points
            .iter()
            .map(|p| MetricView {
                temporality: temporality(h.aggregation_temporality),
                exponential_histogram: Some(ExponentialHistogramView {
                    count: p.count,
                    sum: p.sum,
                    min: p.min,
                    max: p.max,
                    scale: p.scale,
                    zero_count: p.zero_count,
                    positive: buckets(&p.positive),
                    negative: buckets(&p.negative),
                }),
                ..base(
                    MetricKind::ExponentialHistogram,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                )
            })
            .collect(),
        Some(Data::Summary(s)) => s
            .data_points
            .iter()
            .map(|p| MetricView {
                summary: Some(SummaryView {
                    count: p.count,
                    sum: p.sum,
                    quantiles: p
                        .quantile_values
                        .iter()
                        .map(|q| QuantileView {
                            quantile: q.quantile,
                            value: q.value,
                        })
                        .collect(),
                }),
                ..base(
                    MetricKind::Summary,
                    &p.attributes,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                )
            })
            .collect(),
    }
}

struct Series {
    point: MetricView,
    seq: u64,
    bytes: usize,
}

/// Latest points per series, bounded by bytes.
pub(crate) struct Metrics {
    budget: usize,
    bytes: usize,
    series: HashMap<String, Series>,
    /// Series keys by the sequence number of their last update (oldest first).
    order: BTreeMap<u64, String>,
    next_seq: u64,
    pub(crate) evicted: u64,
}

impl Metrics {
    pub(crate) fn new(budget: usize) -> Self {
        Metrics {
            budget,
            bytes: 0,
            series: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            evicted: 0,
        }
    }

    /// Replaces each series' point with a newer one, then evicts the least recently updated
    /// series past the budget. A point older than the stored one is ignored.
    pub(crate) fn insert(&mut self, points: Vec<MetricView>) {
        for point in points {
            let key = point.series_key();
            let seq = self.next_seq;
            self.next_seq += 1;
            let bytes = point.estimated_bytes()
                + 2 * (key.capacity() + ENTRY_OVERHEAD)
                + size_of::<Series>()
                + size_of::<u64>();
            match self.series.get_mut(&key) {
                Some(s) => {
                    if point.time_unix_nano < s.point.time_unix_nano {
                        continue;
                    }
                    self.order.remove(&s.seq);
                    self.bytes = self.bytes - s.bytes + bytes;
                    *s = Series { point, seq, bytes };
                    self.order.insert(seq, key);
                }
                None => {
                    self.bytes += bytes;
                    self.order.insert(seq, key.clone());
                    self.series.insert(key, Series { point, seq, bytes });
                }
            }
        }
        while self.bytes > self.budget {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(s) = self.series.remove(&key) {
                self.bytes -= s.bytes;
                self.evicted += 1;
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }

    /// Matching series sorted by service, name and attributes; at most [`MAX_LIMIT`].
    pub(crate) fn query(&self, q: &MetricQuery) -> Vec<MetricView> {
        let mut hits: Vec<(&String, &MetricView)> = self
            .series
            .iter()
            .filter(|(_, s)| {
                q.name.as_ref().is_none_or(|n| s.point.name == *n)
                    && q.service.as_ref().is_none_or(|v| *s.point.service == **v)
            })
            .map(|(k, s)| (k, &s.point))
            .collect();
        hits.sort_by(|a, b| a.0.cmp(b.0));
        hits.into_iter()
            .take(MAX_LIMIT)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Checks that counters and indexes agree (tests).
    #[cfg(test)]
    pub(crate) fn check_consistency(&self) {
        assert_eq!(self.series.len(), self.order.len());
        for (seq, key) in &self.order {
            assert_eq!(self.series[key].seq, *seq);
        }
        assert_eq!(
            self.bytes,
            self.series.values().map(|s| s.bytes).sum::<usize>()
        );
        assert!(self.bytes <= self.budget);
    }
}
