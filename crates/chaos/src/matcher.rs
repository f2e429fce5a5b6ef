//! Request conditions of a rule, compiled (typed header names, methods, regexes).

use crate::plan::FaultTarget;
use http::{HeaderMap, HeaderName, Method, Uri};
use regex::Regex;

/// A condition on a header value: a string (exact), `{exact: ..}`, `{regex: ..}` or `{present: bool}`.
pub use otlp_mesh_units::ValueMatch;

#[derive(Debug)]
pub(crate) enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub(crate) enum ValueMatcher {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl ValueMatcher {
    fn matches<'a>(&self, mut values: impl Iterator<Item = &'a str>) -> bool {
        match self {
            ValueMatcher::Present(want) => values.next().is_some() == *want,
            ValueMatcher::Exact(e) => values.any(|v| v == e),
            ValueMatcher::Regex(r) => values.any(|v| r.is_match(v)),
        }
    }
}

/// Compiled conditions; every given condition must hold.
#[derive(Debug)]
pub(crate) struct CompiledMatch {
    pub listener: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub path: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub headers: Vec<(HeaderName, ValueMatcher)>,
}

impl CompiledMatch {
    pub(crate) fn new_value(m: &ValueMatch) -> Result<ValueMatcher, regex::Error> {
        Ok(match m {
            ValueMatch::Exact(v) => ValueMatcher::Exact(v.clone()),
            ValueMatch::Regex(r) => ValueMatcher::Regex(Regex::new(r)?),
            ValueMatch::Present(p) => ValueMatcher::Present(*p),
        })
    }

    /// Whether the request (and where it is in the proxy) satisfies every condition.
    pub(crate) fn matches(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        target: &FaultTarget,
    ) -> bool {
        if let Some(l) = &self.listener
            && *l != target.listener
        {
            return false;
        }
        if let Some(r) = &self.route
            && *r != target.route
        {
            return false;
        }
        if let Some(c) = &self.cluster
            && Some(c) != target.cluster.as_ref()
        {
            return false;
        }
        let path = uri.path();
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
            && !methods.contains(method)
        {
            return false;
        }
        self.headers.iter().all(|(name, m)| {
            m.matches(headers.get_all(name).iter().filter_map(|v| v.to_str().ok()))
        })
    }
}

/// Prefix match on whole path segments, as routes do: `/api` matches `/api` and `/api/x`, not `/apix`.
fn segment_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}
