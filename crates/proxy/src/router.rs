//! Route tables compiled from config, and first-match request matching.
//!
//! Matching reads the request head only and does not allocate. Path prefixes match whole
//! segments (`/api` matches `/api` and `/api/x`, not `/apix`), as in the Kubernetes Gateway API.

use http::{HeaderName, HeaderValue, Method, request::Parts};
use otlp_mesh_config::{HeaderOps, ListenerConfig, RouteConfig, ValueMatch};
use regex::Regex;
use std::time::Duration;

/// Compiled routes of one listener, in config order; `T` is what a split entry points at.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
    index: SegmentIndex,
}

/// Route indices keyed by the first path segment a route requires, so a lookup tests only the
/// routes that can match (plus those with no fixed first segment), still in config order.
#[derive(Debug, Default)]
struct SegmentIndex {
    by_segment: std::collections::HashMap<Box<str>, Vec<u32>>,
    /// Routes without a fixed first segment (regex, `/`, no path condition).
    any: Vec<u32>,
}

/// `api` for `/api/v1?x`, `` for `/`.
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

impl SegmentIndex {
    fn build<T>(routes: &[Route<T>]) -> Self {
        let mut index = SegmentIndex::default();
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            match &r.path {
                PathMatch::Exact(p) | PathMatch::Prefix(p) => index
                    .by_segment
                    .entry(first_segment(p).into())
                    .or_default()
                    .push(i),
                PathMatch::Any | PathMatch::Regex(_) => index.any.push(i),
            }
        }
        index
    }
}

/// One compiled route.
#[derive(Debug)]
pub struct Route<T> {
    pub name: String,
    /// Position in the listener's route list.
    pub index: usize,
    /// Selects the cluster's circuit-breaker thresholds.
    pub priority: otlp_mesh_config::RoutePriority,
    path: PathMatch,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    /// Split targets with cumulative weights.
    targets: Vec<(T, u32)>,
    pub timeout: Option<Duration>,
    /// (matched prefix, replacement) for `rewrite.path_prefix`.
    pub prefix_rewrite: Option<(String, String)>,
    pub host_rewrite: Option<HeaderValue>,
    pub request_headers: CompiledHeaderOps,
    pub response_headers: CompiledHeaderOps,
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl ValueMatcher {
    fn compile(m: &ValueMatch) -> Result<Self, regex::Error> {
        Ok(match m {
            ValueMatch::Exact(v) => ValueMatcher::Exact(v.clone()),
            ValueMatch::Regex(r) => ValueMatcher::Regex(Regex::new(r)?),
            ValueMatch::Present(p) => ValueMatcher::Present(*p),
        })
    }

    /// Whether the (possibly repeated) values satisfy the condition.
    fn matches<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        match self {
            ValueMatcher::Present(want) => values.next().is_some() == *want,
            ValueMatcher::Exact(e) => values.any(|v| v == e),
            ValueMatcher::Regex(r) => values.any(|v| r.is_match(v)),
        }
    }
}

/// Header edits compiled to typed names and values.
#[derive(Debug, Default)]
pub struct CompiledHeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl CompiledHeaderOps {
    fn compile(ops: Option<&HeaderOps>) -> Result<Self, String> {
        let Some(ops) = ops else {
            return Ok(Self::default());
        };
        let pair = |(k, v): (&String, &String)| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))?,
                HeaderValue::from_str(v).map_err(|e| format!("header `{k}` value: {e}"))?,
            ))
        };
        Ok(CompiledHeaderOps {
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header `{k}`: {e}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
    }
}

impl<T> RouteTable<T> {
    /// Compiles a listener's routes; `resolve` maps a cluster name to the split target.
    pub fn compile(
        listener: &ListenerConfig,
        mut resolve: impl FnMut(&str, &str) -> Option<T>,
    ) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(listener.routes.len());
        for (i, rc) in listener.routes.iter().enumerate() {
            let name = rc
                .name
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| format!("{}/{i}", listener.name.value));
            let route = Route::compile(name, i, rc, &mut resolve)
                .map_err(|e| format!("listener `{}` route {i}: {e}", listener.name.value))?;
            routes.push(route);
        }
        let index = SegmentIndex::build(&routes);
        Ok(RouteTable { routes, index })
    }

    /// The first route (in config order) matching the request head.
    pub fn find(&self, req: &Parts) -> Option<&Route<T>> {
        let keyed: &[u32] = self
            .index
            .by_segment
            .get(first_segment(req.uri.path()))
            .map_or(&[], Vec::as_slice);
        // Merge the two ascending candidate lists so config order (first match wins) is kept.
        let (mut a, mut b) = (keyed.iter().peekable(), self.index.any.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            if let Some(route) = next.and_then(|&i| self.routes.get(i as usize))
                && route.matches(req)
            {
                return Some(route);
            }
        }
    }

    /// The first matching route by testing every route in order: the reference [`Self::find`]
    /// must agree with (property-tested), and the baseline the router benchmark compares against.
    pub fn find_linear(&self, req: &Parts) -> Option<&Route<T>> {
        self.routes.iter().find(|r| r.matches(req))
    }

    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }
}

impl<T> Route<T> {
    fn compile(
        name: String,
        index: usize,
        rc: &RouteConfig,
        resolve: &mut impl FnMut(&str, &str) -> Option<T>,
    ) -> Result<Self, String> {
        let m = &rc.matcher;
        let path = if let Some(p) = &m.path_exact {
            PathMatch::Exact(p.value.clone())
        } else if let Some(p) = &m.path_prefix {
            if p.value == "/" {
                PathMatch::Any
            } else {
                PathMatch::Prefix(p.value.clone())
            }
        } else if let Some(r) = &m.path_regex {
            PathMatch::Regex(Regex::new(&r.value).map_err(|e| e.to_string())?)
        } else {
            PathMatch::Any
        };
        let methods = match &m.methods {
            Some(list) => Some(
                list.iter()
                    .map(|s| Method::from_bytes(s.value.as_bytes()).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
                Ok((
                    name,
                    ValueMatcher::compile(&v.value).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let query = m
            .query
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    ValueMatcher::compile(&v.value).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;

        let split: Vec<(String, u32)> = match (&rc.cluster, &rc.split) {
            (Some(c), _) => vec![(c.value.clone(), 1)],
            (None, Some(s)) => s
                .value
                .iter()
                .map(|w| (w.cluster.value.clone(), w.weight.value))
                .collect(),
            (None, None) => return Err("route has no destination".into()),
        };
        let mut targets = Vec::with_capacity(split.len());
        let mut cumulative = 0u32;
        for (cluster, weight) in split {
            if weight == 0 {
                continue;
            }
            cumulative = cumulative.saturating_add(weight);
            let target =
                resolve(&name, &cluster).ok_or_else(|| format!("unknown cluster `{cluster}`"))?;
            targets.push((target, cumulative));
        }
        if targets.is_empty() {
            return Err("all split weights are 0".into());
        }

        let timeout = rc
            .timeout
            .unwrap_or(otlp_mesh_config::DEFAULT_ROUTE_TIMEOUT);
        let rewrite = rc.rewrite.as_ref();
        let prefix_rewrite = match (rewrite.and_then(|r| r.path_prefix.as_ref()), &m.path_prefix) {
            (Some(to), Some(from)) => Some((from.value.clone(), to.value.clone())),
            _ => None,
        };
        let host_rewrite = match rewrite.and_then(|r| r.host.as_ref()) {
            Some(h) => Some(HeaderValue::from_str(&h.value).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Route {
            name,
            index,
            priority: rc.priority,
            path,
            methods,
            headers,
            query,
            targets,
            timeout: (!timeout.is_zero()).then_some(timeout.0),
            prefix_rewrite,
            host_rewrite,
            request_headers: CompiledHeaderOps::compile(rc.request_headers.as_ref())?,
            response_headers: CompiledHeaderOps::compile(rc.response_headers.as_ref())?,
        })
    }

    /// Whether the request head satisfies every condition of this route.
    pub fn matches(&self, req: &Parts) -> bool {
        let path = req.uri.path();
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => segment_prefix(path, p),
            PathMatch::Regex(r) => r.is_match(path),
        };
        if !path_ok {
            return false;
        }
        if let Some(methods) = &self.methods
            && !methods.contains(&req.method)
        {
            return false;
        }
        for (name, m) in &self.headers {
            let values = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            if !m.matches(values) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let q = req.uri.query().unwrap_or("");
            for (name, m) in &self.query {
                let values = q.split('&').filter_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v)
                });
                if !m.matches(values) {
                    return false;
                }
            }
        }
        true
    }

    /// Picks a split target by weight (uniform random over the cumulative weights).
    /// Compilation guarantees at least one target, so this is `None` only for a hand-built route.
    pub fn pick_target(&self) -> Option<&T> {
        let (first, rest) = self.targets.split_first()?;
        if rest.is_empty() {
            return Some(&first.0);
        }
        let total = self.targets.last().map_or(1, |t| t.1);
        let x = fastrand::u32(0..total);
        self.targets.iter().find(|(_, c)| x < *c).map(|(t, _)| t)
    }

    /// Every target with its own (non-cumulative) weight.
    pub fn targets(&self) -> impl Iterator<Item = (&T, u32)> {
        let mut prev = 0;
        self.targets.iter().map(move |(t, c)| {
            let w = c - prev;
            prev = *c;
            (t, w)
        })
    }

    /// The upstream path and query after `rewrite.path_prefix`, if this route rewrites.
    pub fn rewrite_path(&self, uri: &http::Uri) -> Option<String> {
        let (from, to) = self.prefix_rewrite.as_ref()?;
        let path = uri.path();
        let rest = path.get(from.len()..).unwrap_or("");
        let mut out =
            String::with_capacity(to.len() + rest.len() + 1 + uri.query().map_or(0, str::len));
        out.push_str(to);
        if to.ends_with('/') && rest.starts_with('/') {
            out.push_str(&rest[1..]);
        } else if rest.is_empty() || rest.starts_with('/') || to.ends_with('/') {
            out.push_str(rest);
        } else {
            out.push('/');
            out.push_str(rest);
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = uri.query() {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

fn segment_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otlp_mesh_config::parse_str;

    fn table(routes: &str) -> RouteTable<String> {
        let yaml = format!(
            "listeners:\n  - name: l\n    bind: 127.0.0.1:0\n    routes:\n{routes}\nclusters:\n  - {{ name: a, discovery: {{ static: [] }} }}\n  - {{ name: b, discovery: {{ static: [] }} }}\n"
        );
        let cfg = parse_str(&yaml, "t").unwrap();
        RouteTable::compile(&cfg.listeners[0], |_, c| Some(c.to_string())).unwrap()
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn found<'a>(t: &'a RouteTable<String>, r: &Parts) -> Option<&'a str> {
        t.find(r).map(|r| r.name.as_str())
    }

    #[test]
    fn first_match_wins_with_all_conditions() {
        let t = table(
            "      - { name: canary, match: { path_prefix: /api, headers: { x-canary: \"true\" } }, cluster: b }\n      - { name: posts, match: { path_prefix: /api, methods: [POST], query: { v: \"2\" } }, cluster: b }\n      - { name: api, match: { path_prefix: /api }, cluster: a }\n      - { name: exact, match: { path_exact: /health }, cluster: a }\n      - { name: re, match: { path_regex: \"^/v[0-9]+/\" }, cluster: a }",
        );
        assert_eq!(
            found(&t, &req("GET", "/api/x", &[("x-canary", "true")])),
            Some("canary")
        );
        assert_eq!(
            found(&t, &req("GET", "/api/x", &[("x-canary", "false")])),
            Some("api")
        );
        assert_eq!(found(&t, &req("POST", "/api?a=1&v=2", &[])), Some("posts"));
        assert_eq!(found(&t, &req("POST", "/api?v=3", &[])), Some("api"));
        assert_eq!(
            found(&t, &req("GET", "/apix", &[])),
            None,
            "prefix matches whole segments"
        );
        assert_eq!(found(&t, &req("GET", "/health", &[])), Some("exact"));
        assert_eq!(found(&t, &req("GET", "/health/x", &[])), None);
        assert_eq!(found(&t, &req("GET", "/v2/x", &[])), Some("re"));
    }

    #[test]
    fn header_regex_and_presence() {
        let t = table(
            "      - { name: r, match: { headers: { x-user: { regex: \"^adm\" } } }, cluster: a }\n      - { name: p, match: { headers: { x-debug: { present: true } } }, cluster: a }\n      - { name: absent, match: { headers: { x-debug: { present: false } } }, cluster: a }",
        );
        assert_eq!(
            found(&t, &req("GET", "/", &[("x-user", "admin")])),
            Some("r")
        );
        assert_eq!(found(&t, &req("GET", "/", &[("x-debug", "")])), Some("p"));
        assert_eq!(found(&t, &req("GET", "/", &[])), Some("absent"));
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let t = table(
            "      - { match: {}, split: [ { cluster: a, weight: 90 }, { cluster: b, weight: 10 } ] }",
        );
        let route = &t.routes()[0];
        fastrand::seed(7);
        let n = 100_000;
        let b = (0..n)
            .filter(|_| route.pick_target().unwrap() == "b")
            .count() as f64;
        // Binomial sd = sqrt(n p (1-p)) ≈ 95; allow 5 sd.
        assert!((b - 10_000.0).abs() < 475.0, "b picked {b} times");
        let weights: Vec<u32> = route.targets().map(|(_, w)| w).collect();
        assert_eq!(weights, vec![90, 10]);
    }

    #[test]
    fn prefix_rewrite_keeps_rest_and_query() {
        let t = table(
            "      - { match: { path_prefix: /api }, rewrite: { path_prefix: /internal }, cluster: a }\n      - { match: { path_prefix: /root }, rewrite: { path_prefix: / }, cluster: a }",
        );
        let r = &t.routes()[0];
        let u = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(r.rewrite_path(&u("/api/x?q=1")).unwrap(), "/internal/x?q=1");
        assert_eq!(r.rewrite_path(&u("/api")).unwrap(), "/internal");
        let r = &t.routes()[1];
        assert_eq!(r.rewrite_path(&u("/root/x")).unwrap(), "/x");
        assert_eq!(r.rewrite_path(&u("/root")).unwrap(), "/");
    }

    proptest::proptest! {
        #[test]
        fn index_agrees_with_linear_scan(
            kinds in proptest::collection::vec((0u8..4, 0u8..4), 1..40),
            probes in proptest::collection::vec((0u8..4, 0u8..4, proptest::bool::ANY), 1..40),
        ) {
            let seg = |n: u8| ["a", "b", "ab", ""][n as usize];
            let mut routes = String::new();
            for (kind, s) in &kinds {
                let m = match kind {
                    0 => format!("path_prefix: /{}", seg(*s)),
                    1 => format!("path_exact: /{}/x", seg(*s)),
                    2 => format!("path_regex: \"^/{}\"", seg(*s)),
                    _ => "methods: [GET]".to_string(),
                };
                routes.push_str(&format!("      - {{ match: {{ {m} }}, cluster: a }}\n"));
            }
            let t = table(routes.trim_end());
            for (s1, s2, post) in probes {
                let uri = format!("/{}/{}", seg(s1), seg(s2));
                let r = req(if post { "POST" } else { "GET" }, &uri, &[]);
                let fast = t.find(&r).map(|r| r as *const _);
                let slow = t.find_linear(&r).map(|r| r as *const _);
                proptest::prop_assert_eq!(fast, slow, "uri {}", uri);
            }
        }
    }

    #[test]
    fn default_timeout_and_zero_disables() {
        let t = table(
            "      - { match: {}, cluster: a }\n      - { match: {}, cluster: a, timeout: 0 }",
        );
        assert_eq!(t.routes()[0].timeout, Some(Duration::from_secs(15)));
        assert_eq!(t.routes()[1].timeout, None);
    }
}
