//! Semantic checks that serde cannot express. Every problem is collected; none stops the others.

use crate::{Config, ConfigError, Located, RouteConfig, ValueMatch};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

struct Collector<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn at<T>(&mut self, loc: &Located<T>, path: impl Into<String>, message: impl Into<String>) {
        self.push(loc.line, loc.column, path, message);
    }

    fn push(
        &mut self,
        line: u64,
        column: u64,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            path: path.into(),
            message: message.into(),
        });
    }

    fn socket_addr(&mut self, loc: &Located<String>, path: &str) {
        if loc.value.parse::<SocketAddr>().is_err() {
            self.at(
                loc,
                path,
                format!(
                    "`{}` is not a socket address (expected ip:port, e.g. 127.0.0.1:8080)",
                    loc.value
                ),
            );
        }
    }
}

pub(crate) fn validate(config: &Config, file: &str) -> Vec<ConfigError> {
    let mut c = Collector {
        file,
        errors: Vec::new(),
    };
    c.socket_addr(&config.admin.bind, "admin.bind");

    let mut cluster_names = HashSet::new();
    for (i, cluster) in config.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if cluster.name.value.is_empty() {
            c.at(&cluster.name, format!("{path}.name"), "must not be empty");
        } else if !cluster_names.insert(cluster.name.value.as_str()) {
            c.at(
                &cluster.name,
                format!("{path}.name"),
                format!("duplicate cluster name `{}`", cluster.name.value),
            );
        }
        validate_discovery(
            &mut c,
            &cluster.discovery,
            cluster,
            &format!("{path}.discovery"),
        );
        let hashing = matches!(
            cluster.balancer.value,
            crate::BalancerKind::RingHash | crate::BalancerKind::Maglev
        );
        match (&cluster.hash_key, hashing) {
            (None, true) => c.at(
                &cluster.balancer,
                format!("{path}.hash_key"),
                "ring_hash and maglev need `hash_key` (client_ip, header:<name> or cookie:<name>)",
            ),
            (Some(k), false) => c.at(
                k,
                format!("{path}.hash_key"),
                "only ring_hash and maglev use a hash key",
            ),
            (Some(k), true) => {
                let ok = k.value == "client_ip"
                    || k.value
                        .strip_prefix("header:")
                        .is_some_and(|h| http::HeaderName::from_bytes(h.trim().as_bytes()).is_ok())
                    || k.value
                        .strip_prefix("cookie:")
                        .is_some_and(|n| !n.trim().is_empty());
                if !ok {
                    c.at(
                        k,
                        format!("{path}.hash_key"),
                        format!(
                            "`{}`: use client_ip, header:<name> or cookie:<name>",
                            k.value
                        ),
                    );
                }
            }
            (None, false) => {}
        }
        if cluster.balancer.value == crate::BalancerKind::Maglev
            && !is_prime(cluster.maglev_table_size)
        {
            c.at(
                cluster,
                format!("{path}.maglev_table_size"),
                format!("{} is not a prime", cluster.maglev_table_size),
            );
        }
        if let Some(a) = &cluster.adaptive {
            if cluster.balancer.value != crate::BalancerKind::Adaptive {
                c.at(
                    a,
                    format!("{path}.adaptive"),
                    "only `balancer: adaptive` uses these settings",
                );
            }
            use crate::BalancerKind::*;
            for (k, cand) in a.candidates.iter().enumerate() {
                if !matches!(
                    cand.value,
                    RoundRobin | WeightedRoundRobin | LeastRequest | P2cEwma | Random
                ) {
                    c.at(
                        cand,
                        format!("{path}.adaptive.candidates[{k}]"),
                        "candidates are round_robin, weighted_round_robin, least_request, p2c_ewma and random",
                    );
                }
                if a.candidates[..k].iter().any(|o| o.value == cand.value) {
                    c.at(
                        cand,
                        format!("{path}.adaptive.candidates[{k}]"),
                        "is listed twice",
                    );
                }
            }
            if a.candidates.is_empty() {
                c.at(
                    a,
                    format!("{path}.adaptive.candidates"),
                    "must list at least one algorithm",
                );
            }
            if !(0.0..1.0).contains(&a.min_improvement.value) {
                c.at(
                    &a.min_improvement,
                    format!("{path}.adaptive.min_improvement"),
                    "must be at least 0 and below 1 (0.2 = a 20 % lower score)",
                );
            }
            if a.evaluation_interval.is_zero() || a.window.value.0 < a.evaluation_interval.0 {
                c.at(
                    &a.window,
                    format!("{path}.adaptive.window"),
                    "must be at least evaluation_interval (> 0)",
                );
            }
        }
        if cluster.ewma.decay.is_zero() {
            c.at(
                cluster,
                format!("{path}.ewma.decay"),
                "must be greater than 0",
            );
        }
        if let Some(b) = &cluster.circuit_breaker {
            for (field, message) in crate::resilience::check_breaker(b) {
                c.at(b, format!("{path}.circuit_breaker.{field}"), message);
            }
        }
        if let Some(h) = &cluster.health_check {
            for (field, message) in crate::health::check_health(h) {
                c.at(h, format!("{path}.health_check.{field}"), message);
            }
        }
        if let Some(o) = &cluster.outlier_detection {
            for (field, message) in crate::health::check_outlier(o) {
                c.at(o, format!("{path}.outlier_detection.{field}"), message);
            }
        }
        if cluster.connect_timeout.is_zero() {
            c.at(
                cluster,
                format!("{path}.connect_timeout"),
                "must be greater than 0",
            );
        }
    }

    let mut rule_names = HashSet::new();
    for (i, rule) in config.chaos.rules.iter().enumerate() {
        let path = format!("chaos.rules[{i}]");
        if !rule_names.insert(rule.name.as_str()) {
            c.at(
                rule,
                format!("{path}.name"),
                format!("duplicate fault rule name `{}`", rule.name),
            );
        }
        if let Err(errs) = rule.value.validate() {
            for e in errs {
                c.at(rule, format!("{path}.{}", e.field), e.message);
            }
        }
    }

    let mut listener_names = HashSet::new();
    let mut binds: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if listener.name.value.is_empty() {
            c.at(&listener.name, format!("{path}.name"), "must not be empty");
        } else if !listener_names.insert(listener.name.value.as_str()) {
            c.at(
                &listener.name,
                format!("{path}.name"),
                format!("duplicate listener name `{}`", listener.name.value),
            );
        }
        c.socket_addr(&listener.bind, &format!("{path}.bind"));
        if let Ok(addr) = listener.bind.value.parse::<SocketAddr>()
            && addr.port() != 0
            && let Some(other) = binds.insert(addr, i)
        {
            c.at(
                &listener.bind,
                format!("{path}.bind"),
                format!("`{addr}` is already used by listeners[{other}]"),
            );
        }
        if listener.limits.max_request_headers.0 < 8192 {
            c.at(
                listener,
                format!("{path}.limits.max_request_headers"),
                "must be at least 8KiB",
            );
        }
        for (name, value) in [
            ("via", &listener.via),
            ("server_header", &listener.server_header),
        ] {
            if let Some(v) = value
                && http::HeaderValue::from_str(v).is_err()
            {
                c.at(
                    listener,
                    format!("{path}.{name}"),
                    format!("`{v}` is not a valid header value"),
                );
            }
        }
        let mut route_names = HashSet::new();
        for (j, route) in listener.routes.iter().enumerate() {
            let rpath = format!("{path}.routes[{j}]");
            if let Some(name) = &route.name
                && !route_names.insert(name.value.as_str())
            {
                c.at(
                    name,
                    format!("{rpath}.name"),
                    format!("duplicate route name `{}`", name.value),
                );
            }
            validate_route(&mut c, route, &rpath, &cluster_names);
            if let Some(r) = &route.retry {
                for (field, message) in crate::resilience::check_retry(r) {
                    c.at(r, format!("{rpath}.retry.{field}"), message);
                }
            }
            if let Some(r) = &route.rate_limit {
                for (field, message) in crate::resilience::check_rate_limit(r) {
                    c.at(r, format!("{rpath}.rate_limit.{field}"), message);
                }
            }
            if let Some(fault) = &route.fault {
                let rule = fault.value.to_rule(
                    &listener.name.value,
                    &route.route_name(&listener.name.value, j),
                );
                if let Err(errs) = rule.validate() {
                    for e in errs {
                        let field = if e.field == "rule" {
                            String::new()
                        } else {
                            format!(".{}", e.field)
                        };
                        c.at(fault, format!("{rpath}.fault{field}"), e.message);
                    }
                }
            }
        }
    }
    if let Some(t) = &config.telemetry {
        validate_telemetry(&mut c, t);
    }
    c.errors
}

/// Checks a `discovery` block (a cluster's, or a load-balancing exporter's `resolver`) at
/// `path`; problems with the block as a whole are reported at `at`.
fn validate_discovery<T>(c: &mut Collector<'_>, d: &crate::Discovery, at: &Located<T>, path: &str) {
    let sources = [
        d.static_endpoints.is_some(),
        d.dns.is_some(),
        d.file.is_some(),
        d.etcd.is_some(),
        d.consul.is_some(),
        d.kubernetes.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if sources > 1 {
        c.at(
            at,
            path.to_string(),
            "set exactly one discovery source (static, dns, file, etcd, consul or kubernetes)",
        );
    }
    if let Some(dns) = &d.dns {
        let p = format!("{path}.dns");
        let name = dns.name.trim();
        match dns.record_type {
            crate::DnsRecordType::A => {
                let ok = name
                    .rsplit_once(':')
                    .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    c.at(
                        dns,
                        format!("{p}.name"),
                        format!("`{name}` must be host:port"),
                    );
                }
            }
            crate::DnsRecordType::Srv => {
                if name.is_empty() || name.contains(':') {
                    c.at(
                        dns,
                        format!("{p}.name"),
                        format!("`{name}` must be an SRV name like _http._tcp.example.com"),
                    );
                }
            }
        }
        if dns.min_ttl.is_zero() || dns.min_ttl.0 > dns.max_ttl.0 {
            c.at(
                dns,
                format!("{p}.min_ttl"),
                "must be above 0 and at most max_ttl",
            );
        }
    }
    if let Some(file) = &d.file {
        if file.path.trim().is_empty() {
            c.at(file, format!("{path}.file.path"), "must not be empty");
        }
        if file.interval.is_zero() {
            c.at(file, format!("{path}.file.interval"), "must be above 0");
        }
    }
    if let Some(etcd) = &d.etcd {
        let p = format!("{path}.etcd");
        if etcd.endpoints.is_empty() {
            c.at(
                etcd,
                format!("{p}.endpoints"),
                "list at least one etcd client URL",
            );
        }
        for (k, ep) in etcd.endpoints.iter().enumerate() {
            if !ep.starts_with("http://") || ep.len() <= "http://".len() {
                c.at(
                    etcd,
                    format!("{p}.endpoints[{k}]"),
                    format!("`{ep}` must be an http:// URL (https is not supported yet)"),
                );
            }
        }
        if etcd.prefix.is_empty() {
            c.at(etcd, format!("{p}.prefix"), "must not be empty");
        }
    }
    if let Some(consul) = &d.consul {
        let p = format!("{path}.consul");
        if !consul.address.starts_with("http://") {
            c.at(
                consul,
                format!("{p}.address"),
                format!("`{}` must be an http:// URL", consul.address),
            );
        }
        if consul.service.trim().is_empty() {
            c.at(consul, format!("{p}.service"), "must not be empty");
        }
    }
    if let Some(k8s) = &d.kubernetes {
        let p = format!("{path}.kubernetes");
        if k8s.service.trim().is_empty() {
            c.at(k8s, format!("{p}.service"), "must not be empty");
        }
        if k8s.namespace.trim().is_empty() {
            c.at(k8s, format!("{p}.namespace"), "must not be empty");
        }
        if let Some(api) = &k8s.api_server
            && !api.starts_with("http://")
            && !api.starts_with("https://")
        {
            c.at(
                k8s,
                format!("{p}.api_server"),
                format!("`{api}` must be a URL"),
            );
        }
        if matches!(k8s.port, Some(crate::PortRef::Number(0))) {
            c.at(k8s, format!("{p}.port"), "must be 1..=65535");
        }
    }
    match &d.static_endpoints {
        Some(endpoints) => {
            for (j, ep) in endpoints.iter().enumerate() {
                let loc = Located {
                    value: ep.address.clone(),
                    line: ep.line,
                    column: ep.column,
                };
                c.socket_addr(&loc, &format!("{path}.static[{j}]"));
                if ep.weight == 0 {
                    c.at(
                        ep,
                        format!("{path}.static[{j}].weight"),
                        "must be at least 1",
                    );
                }
            }
        }
        None if sources == 0 => c.at(
            at,
            path.to_string(),
            "no discovery source: set one of static, dns, file, etcd, consul or kubernetes",
        ),
        None => {}
    }
}

fn validate_telemetry(c: &mut Collector<'_>, t: &Located<crate::telemetry::TelemetryConfig>) {
    let ratio = &t.tracing.sampling_ratio;
    if !(0.0..=1.0).contains(&ratio.value) {
        c.at(
            ratio,
            "telemetry.tracing.sampling_ratio",
            "must be between 0.0 and 1.0",
        );
    }
    if let Some(r) = &t.receiver {
        if r.grpc.is_none() && r.http.is_none() {
            c.at(r, "telemetry.receiver", "set `grpc`, `http` or both");
        }
        if let Some(a) = &r.grpc {
            c.socket_addr(a, "telemetry.receiver.grpc");
        }
        if let Some(a) = &r.http {
            c.socket_addr(a, "telemetry.receiver.http");
        }
        if r.max_message_size.value.0 == 0 {
            c.at(
                &r.max_message_size,
                "telemetry.receiver.max_message_size",
                "must be above 0",
            );
        }
        if r.max_decompressed_size.value.0 < r.max_message_size.value.0 {
            c.at(
                &r.max_decompressed_size,
                "telemetry.receiver.max_decompressed_size",
                "must be at least max_message_size",
            );
        }
        let receiving = r.max_receiving_bytes.value.0;
        if receiving == 0 || receiving > u64::from(u32::MAX) {
            c.at(
                &r.max_receiving_bytes,
                "telemetry.receiver.max_receiving_bytes",
                "must be above 0 and below 4GiB",
            );
        }
    }
    let m = &t.memory_limit;
    if m.soft.value.0 == 0 || m.soft.value.0 > m.hard.value.0 {
        c.at(
            &m.soft,
            "telemetry.memory_limit.soft",
            "must be above 0 and at most `hard`",
        );
    }
    if t.batch.size.value == 0 {
        c.at(&t.batch.size, "telemetry.batch.size", "must be above 0");
    }
    if t.batch.max_bytes.value.0 < 1024 {
        c.at(
            &t.batch.max_bytes,
            "telemetry.batch.max_bytes",
            "must be at least 1KiB",
        );
    }
    if t.batch.timeout.value.is_zero() {
        c.at(
            &t.batch.timeout,
            "telemetry.batch.timeout",
            "must be above 0",
        );
    }
    if let Some(p) = &t.processors.probabilistic_sampling
        && !(0.0..=1.0).contains(&p.value)
    {
        c.at(
            p,
            "telemetry.processors.probabilistic_sampling",
            "must be between 0.0 and 1.0",
        );
    }
    for (i, rule) in t.processors.redaction.iter().enumerate() {
        let path = format!("telemetry.processors.redaction[{i}]");
        let r = &rule.value;
        if r.key.is_none() && r.value.is_none() {
            c.at(rule, &path, "set `key`, `value` or both");
        }
        if let Some(k) = &r.key {
            check_regex(c, k, &format!("{path}.key"));
        }
        if let Some(v) = &r.value {
            check_regex(c, v, &format!("{path}.value"));
        }
    }
    if let Some(ts) = &t.processors.tail_sampling {
        validate_tail_sampling(c, ts);
    }
    let mut names = HashSet::new();
    for (i, e) in t.exporters.iter().enumerate() {
        let path = format!("telemetry.exporters[{i}]");
        let name = e.name.clone().unwrap_or_else(|| format!("exporter-{i}"));
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            c.at(
                e,
                format!("{path}.name"),
                "use letters, digits, `-` and `_` only",
            );
        } else if !names.insert(name.clone()) {
            c.at(
                e,
                format!("{path}.name"),
                format!("duplicate exporter name `{name}`"),
            );
        }
        let mut targets = Vec::new();
        if let Some(g) = &e.otlp_grpc {
            targets.push(("otlp_grpc", g));
        }
        if let Some(h) = &e.otlp_http {
            targets.push(("otlp_http", h));
        }
        let kinds = usize::from(e.otlp_grpc.is_some())
            + usize::from(e.otlp_http.is_some())
            + usize::from(e.loadbalancing.is_some());
        if kinds != 1 {
            c.at(
                e,
                &path,
                "set exactly one of `otlp_grpc`, `otlp_http` and `loadbalancing`",
            );
        }
        for (kind, ep) in targets {
            check_export_url(c, &ep.endpoint, &format!("{path}.{kind}.endpoint"));
            check_export_headers(c, ep, &ep.headers, &format!("{path}.{kind}.headers"));
            if ep.timeout.value.is_zero() {
                c.at(
                    &ep.timeout,
                    format!("{path}.{kind}.timeout"),
                    "must be above 0",
                );
            }
        }
        if let Some(lb) = &e.loadbalancing {
            let lpath = format!("{path}.loadbalancing");
            match (&lb.resolver, lb.backends.is_empty()) {
                (None, true) => c.at(
                    lb,
                    format!("{lpath}.backends"),
                    "list at least one backend URL, or set `resolver`",
                ),
                (Some(r), false) => c.at(
                    r,
                    format!("{lpath}.resolver"),
                    "set exactly one of `backends` and `resolver`",
                ),
                (Some(r), true) => {
                    validate_discovery(c, r, r, &format!("{lpath}.resolver"));
                }
                (None, false) => {
                    for (field, set) in [
                        ("scheme", lb.scheme.as_ref().map(|s| (s.line, s.column))),
                        ("port", lb.port.as_ref().map(|p| (p.line, p.column))),
                    ] {
                        if let Some((line, column)) = set {
                            c.push(line, column, format!("{lpath}.{field}"), "only used with `resolver` (discovered addresses); write it in the backend URLs instead");
                        }
                    }
                }
            }
            if let Some(p) = &lb.port
                && p.value == 0
            {
                c.at(p, format!("{lpath}.port"), "must be 1..=65535");
            }
            if lb.drain_timeout.value.is_zero() {
                c.at(
                    &lb.drain_timeout,
                    format!("{lpath}.drain_timeout"),
                    "must be above 0",
                );
            }
            let mut seen = HashSet::new();
            for (j, b) in lb.backends.iter().enumerate() {
                let bpath = format!("{lpath}.backends[{j}]");
                check_export_url(c, b, &bpath);
                if !seen.insert(b.value.trim_end_matches('/')) {
                    c.at(b, bpath, format!("duplicate backend `{}`", b.value));
                }
            }
            check_export_headers(c, lb, &lb.headers, &format!("{lpath}.headers"));
            if lb.timeout.value.is_zero() {
                c.at(&lb.timeout, format!("{lpath}.timeout"), "must be above 0");
            }
        }
        let r = &e.retry;
        if r.initial_interval.value.is_zero() || r.initial_interval.value > r.max_interval.value {
            c.at(
                &r.initial_interval,
                format!("{path}.retry.initial_interval"),
                "must be above 0 and at most max_interval",
            );
        }
        if let Some(max) = &e.queue.max_bytes
            && max.value.0 < t.batch.max_bytes.value.0
        {
            c.at(
                max,
                format!("{path}.queue.max_bytes"),
                "must be at least telemetry.batch.max_bytes",
            );
        }
    }
}

fn validate_tail_sampling(
    c: &mut Collector<'_>,
    ts: &Located<crate::telemetry::TailSamplingConfig>,
) {
    let path = "telemetry.processors.tail_sampling";
    if ts.decision_wait.value.is_zero() {
        c.at(
            &ts.decision_wait,
            format!("{path}.decision_wait"),
            "must be above 0",
        );
    }
    if ts.max_traces.value == 0 {
        c.at(
            &ts.max_traces,
            format!("{path}.max_traces"),
            "must be above 0",
        );
    }
    if ts.max_bytes.value.0 < 1024 {
        c.at(
            &ts.max_bytes,
            format!("{path}.max_bytes"),
            "must be at least 1KiB",
        );
    }
    if ts.decision_cache.value == 0 {
        c.at(
            &ts.decision_cache,
            format!("{path}.decision_cache"),
            "must be above 0",
        );
    }
    if let Some(l) = &ts.keep_latency_above
        && l.value.is_zero()
    {
        c.at(
            l,
            format!("{path}.keep_latency_above"),
            "must be above 0 (leave it out to keep no trace for its latency)",
        );
    }
    if let Some(r) = &ts.rate_limit
        && r.spans_per_second.value == 0
    {
        c.at(
            &r.spans_per_second,
            format!("{path}.rate_limit.spans_per_second"),
            "must be above 0",
        );
    }
}

/// An exporter URL must be `http://` or `https://` with a host.
fn check_export_url(c: &mut Collector<'_>, url: &Located<String>, path: &str) {
    let ok = url
        .value
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
    if ok.is_none() {
        c.at(
            url,
            path,
            format!("`{}` is not an http:// or https:// URL", url.value),
        );
    }
}

fn check_export_headers<T>(
    c: &mut Collector<'_>,
    at: &Located<T>,
    headers: &std::collections::BTreeMap<String, String>,
    path: &str,
) {
    for h in headers.keys() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            c.at(at, path, format!("`{h}` is not a header name"));
        }
    }
}

fn validate_route(
    c: &mut Collector<'_>,
    route: &Located<RouteConfig>,
    path: &str,
    clusters: &HashSet<&str>,
) {
    let m = &route.matcher;
    let path_kinds = [&m.path_exact, &m.path_prefix, &m.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if path_kinds > 1 {
        c.at(
            route,
            format!("{path}.match"),
            "use only one of path_exact, path_prefix, path_regex",
        );
    }
    for (field, value) in [
        ("path_exact", &m.path_exact),
        ("path_prefix", &m.path_prefix),
    ] {
        if let Some(p) = value
            && !p.value.starts_with('/')
        {
            c.at(
                p,
                format!("{path}.match.{field}"),
                format!("`{}` must start with `/`", p.value),
            );
        }
    }
    if let Some(re) = &m.path_regex {
        check_regex(c, re, &format!("{path}.match.path_regex"));
    }
    if let Some(methods) = &m.methods {
        for (k, method) in methods.iter().enumerate() {
            if http::Method::from_bytes(method.value.as_bytes()).is_err() || method.value.is_empty()
            {
                c.at(
                    method,
                    format!("{path}.match.methods[{k}]"),
                    format!("`{}` is not an HTTP method", method.value),
                );
            }
        }
    }
    for (name, cond) in &m.headers {
        let field = format!("{path}.match.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            c.at(cond, &field, format!("`{name}` is not a valid header name"));
        }
        if let ValueMatch::Regex(re) = &cond.value {
            check_regex(
                c,
                &Located {
                    value: re.clone(),
                    line: cond.line,
                    column: cond.column,
                },
                &field,
            );
        }
    }
    for (name, cond) in &m.query {
        if let ValueMatch::Regex(re) = &cond.value {
            let field = format!("{path}.match.query.{name}");
            check_regex(
                c,
                &Located {
                    value: re.clone(),
                    line: cond.line,
                    column: cond.column,
                },
                &field,
            );
        }
    }

    match (&route.cluster, &route.split) {
        (Some(_), Some(split)) => c.at(
            split,
            format!("{path}.split"),
            "use either `cluster` or `split`, not both",
        ),
        (None, None) => c.at(
            route,
            path,
            "route has no destination: set `cluster` or `split`",
        ),
        (Some(cluster), None) => {
            check_cluster_ref(c, cluster, &format!("{path}.cluster"), clusters)
        }
        (None, Some(split)) => {
            if split.value.is_empty() {
                c.at(
                    split,
                    format!("{path}.split"),
                    "must list at least one cluster",
                );
            } else if split.value.iter().all(|w| w.weight.value == 0) {
                c.at(
                    split,
                    format!("{path}.split"),
                    "all weights are 0: at least one must be positive",
                );
            }
            for (k, w) in split.value.iter().enumerate() {
                check_cluster_ref(
                    c,
                    &w.cluster,
                    &format!("{path}.split[{k}].cluster"),
                    clusters,
                );
            }
        }
    }

    if let Some(rw) = &route.rewrite {
        if let Some(prefix) = &rw.path_prefix {
            if m.path_prefix.is_none() {
                c.at(
                    prefix,
                    format!("{path}.rewrite.path_prefix"),
                    "needs `match.path_prefix` (the part it replaces)",
                );
            }
            if !prefix.value.starts_with('/') {
                c.at(
                    prefix,
                    format!("{path}.rewrite.path_prefix"),
                    format!("`{}` must start with `/`", prefix.value),
                );
            }
        }
        if let Some(host) = &rw.host
            && http::uri::Authority::try_from(host.value.as_str()).is_err()
        {
            c.at(
                host,
                format!("{path}.rewrite.host"),
                format!("`{}` is not a valid host", host.value),
            );
        }
    }
    for (field, ops) in [
        ("request_headers", &route.request_headers),
        ("response_headers", &route.response_headers),
    ] {
        let Some(ops) = ops else { continue };
        for (name, value) in ops.set.iter().chain(ops.add.iter()) {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                c.at(
                    route,
                    format!("{path}.{field}"),
                    format!("`{name}` is not a valid header name"),
                );
            }
            if http::HeaderValue::from_str(value).is_err() {
                c.at(
                    route,
                    format!("{path}.{field}.{name}"),
                    format!("`{value}` is not a valid header value"),
                );
            }
        }
        for name in &ops.remove {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                c.at(
                    route,
                    format!("{path}.{field}.remove"),
                    format!("`{name}` is not a valid header name"),
                );
            }
        }
    }
}

fn check_regex(c: &mut Collector<'_>, re: &Located<String>, path: &str) {
    if let Err(e) = regex::Regex::new(&re.value) {
        let first = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        c.at(re, path, format!("invalid regex `{}`: {first}", re.value));
    }
}

fn check_cluster_ref(
    c: &mut Collector<'_>,
    name: &Located<String>,
    path: &str,
    clusters: &HashSet<&str>,
) {
    if !clusters.contains(name.value.as_str()) {
        c.at(name, path, format!("unknown cluster `{}`", name.value));
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}
