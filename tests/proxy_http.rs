#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP proxying end to end: protocols, routing, header handling, load balancing, streaming.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A cluster entry with the given static endpoints.
fn cluster(name: &str, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    format!(
        "  - name: {name}\n    protocol: {protocol}\n    discovery:\n      static: [{}]\n",
        eps.join(", ")
    )
}

fn header_json(resp: &Resp) -> serde_json::Value {
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    resp.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_and_h2c_clients_share_the_listener() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /h2 }}
        cluster: b
      - cluster: a
clusters:
{}{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
        cluster("b", "h2", &[b.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    for (client, version) in [
        (h1_client(), Version::HTTP_11),
        (h2c_client(), Version::HTTP_2),
    ] {
        let req = Request::post(format!("http://{edge}/hello/w%20rld?x=1&y=t%C3%A9"))
            .header("content-type", "text/plain")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .body(full("abc"))
            .unwrap();
        let resp = send(&client, req).await;
        assert_eq!(resp.version, version);
        let cookies: Vec<_> = resp.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated response headers");
        let echo = header_json(&resp);
        assert_eq!(echo["server"], "a");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["path"], "/hello/w%20rld");
        assert_eq!(echo["query"], "x=1&y=t%C3%A9");
        assert_eq!(
            echoed_header(&echo, "x-multi"),
            ["one", "two"],
            "repeated request headers"
        );
        assert_eq!(echo["body_len"], 3);
        assert_eq!(
            echo["version"], "HTTP/1.1",
            "cluster a speaks http1 upstream"
        );
        assert_eq!(echoed_header(&echo, "content-type"), ["text/plain"]);

        // Same listener, a `protocol: h2` cluster behind it.
        let resp = get(&client, &format!("http://{edge}/h2/x")).await;
        assert_eq!(resp.version, version);
        let echo = header_json(&resp);
        assert_eq!(echo["server"], "b");
        assert_eq!(echo["version"], "HTTP/2.0", "cluster b speaks h2c upstream");
    }
    assert!(
        a.hits() == 2 && b.hits() == 2,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_on_path_in_order() {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
        Upstream::echo("d").await,
    ];
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_exact: /exact }}
        cluster: a
      - match: {{ path_regex: \"^/v[0-9]+/\" }}
        cluster: b
      - match: {{ path_prefix: /api }}
        cluster: c
      - match: {{ path_prefix: /exact }}
        cluster: d
clusters:
{}{}{}{}",
        prelude(admin),
        cluster("a", "http1", &[ups[0].addr]),
        cluster("b", "http1", &[ups[1].addr]),
        cluster("c", "http1", &[ups[2].addr]),
        cluster("d", "http1", &[ups[3].addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let cases = [
        ("/exact", Some("a")),
        ("/exact?q=1", Some("a")),
        ("/exact/more", Some("d")),
        ("/v1/users", Some("b")),
        ("/v42/", Some("b")),
        ("/api/v1/x", Some("c")),
        ("/api", Some("c")),
        ("/vx/users", None),
        ("/", None),
        ("/other", None),
    ];
    for (path, want) in cases {
        let resp = get(&client, &format!("http://{edge}{path}")).await;
        match want {
            Some(server) => assert_eq!(resp.header("x-upstream"), Some(server), "{path}: {resp:?}"),
            None => resp.assert_mesh_error(404, "no_route"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_on_method_headers_and_query() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /m, methods: [POST, PUT] }}
        cluster: b
      - match:
          path_prefix: /h
          headers: {{ x-canary: \"true\", x-user: {{ regex: \"^a\" }}, x-debug: {{ present: true }}, x-off: {{ present: false }} }}
        cluster: b
      - match:
          path_prefix: /q
          query: {{ version: \"2\", debug: {{ present: true }} }}
        cluster: b
      - cluster: a
clusters:
{}{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
        cluster("b", "http1", &[b.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let go = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{edge}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(empty()).unwrap();
        let client = client.clone();
        async move {
            send(&client, req)
                .await
                .header("x-upstream")
                .map(str::to_string)
        }
    };
    let b_ = Some("b".to_string());
    let a_ = Some("a".to_string());

    assert_eq!(go("GET", "/m", &[]).await, a_);
    assert_eq!(go("POST", "/m", &[]).await, b_);
    assert_eq!(go("PUT", "/m", &[]).await, b_);
    assert_eq!(go("DELETE", "/m", &[]).await, a_);

    let good = [("x-canary", "true"), ("x-user", "alice"), ("x-debug", "")];
    assert_eq!(go("GET", "/h", &good).await, b_);
    assert_eq!(
        go(
            "GET",
            "/h",
            &[("x-canary", "false"), ("x-user", "alice"), ("x-debug", "1")]
        )
        .await,
        a_,
        "exact header value"
    );
    assert_eq!(
        go(
            "GET",
            "/h",
            &[("x-canary", "true"), ("x-user", "bob"), ("x-debug", "1")]
        )
        .await,
        a_,
        "header regex"
    );
    assert_eq!(
        go("GET", "/h", &[("x-canary", "true"), ("x-user", "alice")]).await,
        a_,
        "present: true"
    );
    assert_eq!(
        go(
            "GET",
            "/h",
            &[
                ("x-canary", "true"),
                ("x-user", "alice"),
                ("x-debug", "1"),
                ("x-off", "1")
            ]
        )
        .await,
        a_,
        "present: false"
    );

    assert_eq!(go("GET", "/q?version=2&debug", &[]).await, b_);
    assert_eq!(go("GET", "/q?debug=1&version=2&other=x", &[]).await, b_);
    assert_eq!(
        go("GET", "/q?version=3&debug=1", &[]).await,
        a_,
        "exact query value"
    );
    assert_eq!(
        go("GET", "/q?version=2", &[]).await,
        a_,
        "query present: true"
    );
    assert_eq!(go("GET", "/q", &[]).await, a_);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: a\nclusters:\n{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    // A chunked HTTP/1.1 request carrying every kind of hop-by-hop header.
    let (tx, body) = channel_body();
    let req = Request::post(format!("http://{edge}/hop"))
        .header("connection", "keep-alive, x-custom-hop")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "gzip")
        .header("upgrade", "h2c-nope")
        .header("x-custom-hop", "1")
        .header("x-end-to-end", "kept")
        .body(body)
        .unwrap();
    let client = h1_client();
    let pending = tokio::spawn(async move { send(&client, req).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
        .await
        .unwrap();
    drop(tx);
    let echo = header_json(&pending.await.unwrap());

    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "x-custom-hop",
    ] {
        assert!(
            echoed_header(&echo, name).is_empty(),
            "hop-by-hop header `{name}` reached the upstream: {echo}"
        );
    }
    // The proxy may re-frame the body as chunked towards the upstream, but must not pass the
    // client's transfer-encoding along with its own.
    let te = echoed_header(&echo, "transfer-encoding");
    assert!(
        te.is_empty() || te == ["chunked"],
        "transfer-encoding upstream: {te:?}"
    );
    assert_eq!(echoed_header(&echo, "x-end-to-end"), ["kept"]);
    assert_eq!(echo["body_len"], 5);
}

fn assert_uuid_v4(id: &str) {
    let groups: Vec<&str> = id.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    assert_eq!(lens, [8, 4, 4, 4, 12], "not a hyphenated UUID: {id}");
    assert!(
        id.chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "not lowercase hex: {id}"
    );
    assert!(groups[2].starts_with('4'), "not version 4: {id}");
    assert!(
        groups[3].starts_with(['8', '9', 'a', 'b']),
        "not the RFC 4122 variant: {id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_by_default() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: a\nclusters:\n{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let url = format!("http://{edge}/fwd");

    let first = get(&client, &url).await;
    let echo = header_json(&first);
    assert_eq!(
        echoed_joined(&echo, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), ["http"]);
    assert!(
        echoed_header(&echo, "forwarded").is_empty(),
        "forwarded is off by default: {echo}"
    );
    assert!(
        echoed_header(&echo, "via").is_empty(),
        "no via unless configured: {echo}"
    );
    let ids = echoed_header(&echo, "x-request-id");
    assert_eq!(ids.len(), 1, "{echo}");
    assert_uuid_v4(&ids[0]);
    assert_eq!(
        first.header("server"),
        Some("upstream-a"),
        "server header kept by default"
    );

    let second = header_json(&get(&client, &url).await);
    let id2 = echoed_header(&second, "x-request-id");
    assert_eq!(id2.len(), 1);
    assert_uuid_v4(&id2[0]);
    assert_ne!(ids[0], id2[0], "each request gets its own id");

    let req = Request::get(&url)
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "req-from-client-42")
        .body(empty())
        .unwrap();
    let echo = header_json(&send(&client, req).await);
    assert_eq!(
        echoed_joined(&echo, "x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(
        echoed_header(&echo, "x-forwarded-proto"),
        ["http"],
        "x-forwarded-proto is set, not appended"
    );
    assert_eq!(echoed_header(&echo, "x-request-id"), ["req-from-client-42"]);

    // Same over h2c.
    let echo = header_json(&get(&h2c_client(), &url).await);
    assert_eq!(
        echoed_joined(&echo, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), ["http"]);
    assert_uuid_v4(&echoed_header(&echo, "x-request-id")[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_as_configured() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    via: otlp-mesh
    server_header: mesh
    x_forwarded_for: false
    forwarded: true
    request_id: false
    routes:
      - cluster: a
clusters:
{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let client = h1_client();
    let url = format!("http://{edge}/fwd");

    let resp = get(&client, &url).await;
    assert_eq!(resp.header("server"), Some("mesh"));
    assert_eq!(resp.headers.get_all("server").iter().count(), 1);
    assert_eq!(resp.header("via"), Some("1.1 otlp-mesh"));
    let echo = header_json(&resp);
    assert_eq!(echoed_header(&echo, "via"), ["1.1 otlp-mesh"]);
    assert_eq!(
        echoed_joined(&echo, "forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http")
    );
    assert!(
        echoed_header(&echo, "x-forwarded-for").is_empty(),
        "x_forwarded_for: false: {echo}"
    );
    assert!(
        echoed_header(&echo, "x-request-id").is_empty(),
        "request_id: false: {echo}"
    );

    let req = Request::get(&url)
        .header("forwarded", "for=1.2.3.4")
        .body(empty())
        .unwrap();
    let echo = header_json(&send(&client, req).await);
    assert_eq!(
        echoed_joined(&echo, "forwarded").as_deref(),
        Some("for=1.2.3.4, for=127.0.0.1;proto=http")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_header_operations_and_rewrites() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /api }}
        cluster: a
        rewrite: {{ path_prefix: /internal, host: backend.local }}
        request_headers: {{ set: {{ x-a: \"1\" }}, add: {{ x-b: \"2\" }}, remove: [x-secret] }}
        response_headers: {{ set: {{ x-c: \"3\" }}, add: {{ x-d: \"4\" }}, remove: [x-internal] }}
      - cluster: a
clusters:
{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        let req = Request::get(format!("http://{edge}/api/users?id=7"))
            .header("x-a", "0")
            .header("x-b", "1")
            .header("x-secret", "s3cr3t")
            .header("x-keep", "k")
            .body(empty())
            .unwrap();
        let resp = send(&client, req).await;
        assert_eq!(resp.header("x-c"), Some("3"));
        assert_eq!(resp.header("x-d"), Some("4"));
        assert_eq!(resp.header("x-internal"), None, "response header removed");
        assert_eq!(resp.header("x-upstream"), Some("a"));
        let echo = header_json(&resp);
        assert_eq!(echo["path"], "/internal/users");
        assert_eq!(echo["query"], "id=7");
        assert_eq!(echo["authority"], "backend.local");
        assert_eq!(echoed_header(&echo, "x-a"), ["1"], "set replaces");
        assert_eq!(echoed_header(&echo, "x-b"), ["1", "2"], "add appends");
        assert!(
            echoed_header(&echo, "x-secret").is_empty(),
            "remove: {echo}"
        );
        assert_eq!(echoed_header(&echo, "x-keep"), ["k"]);

        let echo = header_json(&get(&client, &format!("http://{edge}/api")).await);
        assert_eq!(echo["path"], "/internal");

        // The other route has no operations.
        let resp = get(&client, &format!("http://{edge}/other")).await;
        assert_eq!(resp.header("x-internal"), Some("secret"));
        assert_eq!(resp.header("x-c"), None);
        let echo = header_json(&resp);
        assert_eq!(echo["path"], "/other");
        assert_eq!(
            echo["authority"],
            edge.to_string(),
            "host is kept without a rewrite"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_follows_the_weights() {
    let v1 = Upstream::echo("v1").await;
    let v2 = Upstream::echo("v2").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /zero }}
        split: [ {{ cluster: v1, weight: 1 }}, {{ cluster: v2, weight: 0 }} ]
      - split: [ {{ cluster: v1, weight: 90 }}, {{ cluster: v2, weight: 10 }} ]
clusters:
{}{}",
        prelude(admin),
        cluster("v1", "http1", &[v1.addr]),
        cluster("v2", "http1", &[v2.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    const N: usize = 2000;
    const WORKERS: usize = 8;
    let client = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in 0..N / WORKERS {
                let resp = get(&client, &format!("http://{edge}/split")).await;
                assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
                *counts
                    .entry(resp.header("x-upstream").unwrap().to_string())
                    .or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let n1 = counts.get("v1").copied().unwrap_or(0);
    let n2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(n1 + n2, N, "{counts:?}");
    // Binomial(2000, 0.1): mean 200, sd 13.4; allow 5 sd.
    let sd = (N as f64 * 0.1 * 0.9).sqrt();
    let diff = (n2 as f64 - N as f64 * 0.1).abs();
    assert!(
        diff <= 5.0 * sd,
        "v2 got {n2} of {N}, expected 200 ± {:.0}",
        5.0 * sd
    );

    for _ in 0..50 {
        let resp = get(&client, &format!("http://{edge}/zero")).await;
        assert_eq!(
            resp.header("x-upstream"),
            Some("v1"),
            "weight 0 never chosen"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_the_endpoints_of_a_cluster() {
    let e1 = Upstream::echo("e1").await;
    let e2 = Upstream::echo("e2").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: pair\nclusters:\n{}",
        prelude(admin),
        cluster("pair", "http1", &[e1.addr, e2.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..100 {
            let resp = get(&client, &format!("http://{edge}/rr")).await;
            *counts
                .entry(resp.header("x-upstream").unwrap().to_string())
                .or_default() += 1;
        }
        for name in ["e1", "e2"] {
            let n = counts.get(name).copied().unwrap_or(0);
            assert!((49..=51).contains(&n), "{name} got {n} of 100: {counts:?}");
        }
    }
}

/// Request body streaming: the upstream must see the first chunk while the client still holds
/// back the rest.
async fn request_body_streams(client: HttpClient, protocol: &str) {
    let (first_tx, mut first_rx) = mpsc::unbounded_channel::<Bytes>();
    let up = Upstream::start(move |req: Request<Incoming>| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            let mut announced = false;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Response::builder()
                        .status(500)
                        .body(full("body error"))
                        .unwrap();
                };
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    if !announced && !data.is_empty() {
                        announced = true;
                        let _ = first_tx.send(data.clone());
                    }
                }
            }
            Response::new(full(total.to_string()))
        }
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\nclusters:\n{}",
        prelude(admin),
        cluster("up", protocol, &[up.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    let (tx, body) = channel_body();
    let req = Request::post(format!("http://{edge}/upload"))
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { send(&client, req).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"first-chunk"))))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), first_rx.recv())
        .await
        .expect("upstream did not get the first chunk while the request body was still open: the proxy buffers request bodies")
        .unwrap();
    assert!(b"first-chunk".starts_with(&first), "{first:?}");
    tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 100_000]))))
        .await
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"end"))))
        .await
        .unwrap();
    drop(tx);
    let resp = pending.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(resp.text(), (11 + 100_000 + 3).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_h1() {
    request_body_streams(h1_client(), "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_h2() {
    request_body_streams(h2c_client(), "h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_h1_to_h2() {
    request_body_streams(h1_client(), "h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_h2_to_h1() {
    request_body_streams(h2c_client(), "http1").await;
}

/// Response body streaming: the client must get the first chunk while the upstream holds back
/// the rest (until the test releases it).
async fn response_body_streams(client: HttpClient, protocol: &str) {
    let gate: Arc<Mutex<Option<oneshot::Receiver<()>>>> = Arc::new(Mutex::new(None));
    let (release, wait) = oneshot::channel();
    *gate.lock().unwrap() = Some(wait);
    let up = Upstream::start(move |_req| {
        let gate = gate.clone();
        async move {
            let (tx, body) = channel_body();
            let wait = gate.lock().unwrap().take();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                if let Some(wait) = wait {
                    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                }
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"last")))).await;
            });
            Response::new(body)
        }
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\nclusters:\n{}",
        prelude(admin),
        cluster("up", protocol, &[up.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(get_req(&format!("http://{edge}/dl"))),
    )
    .await
    .expect("no response head while the upstream body is still open")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 5 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("first chunk not delivered while the upstream body is still open: the proxy buffers response bodies")
            .expect("body ended early")
            .unwrap();
        if let Some(d) = frame.data_ref() {
            got.extend_from_slice(d);
        }
    }
    assert_eq!(got, b"first");
    release.send(()).unwrap();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"last"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_h1() {
    response_body_streams(h1_client(), "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_h2() {
    response_body_streams(h2c_client(), "h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_h1_to_h2() {
    response_body_streams(h1_client(), "h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_h2_to_h1() {
    response_body_streams(h2c_client(), "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_h2c_and_h2_cluster() {
    let up = Upstream::start(|req: Request<Incoming>| async move {
        let collected = match req.into_body().collect().await {
            Ok(c) => c,
            Err(e) => {
                return Response::builder()
                    .status(500)
                    .body(full(format!("{e}")))
                    .unwrap();
            }
        };
        let req_trailer = collected
            .trailers()
            .and_then(|t| t.get("x-req-trailer"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "missing".into());
        let body_len = collected.to_bytes().len();
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(format!(
                    "got {body_len} bytes"
                )))))
                .await;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-resp-trailer", "done".parse().unwrap());
            trailers.insert("x-echo-req-trailer", req_trailer.parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        Response::new(body)
    })
    .await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: up\nclusters:\n{}",
        prelude(admin),
        cluster("up", "h2", &[up.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    let (tx, body) = channel_body();
    let req = Request::post(format!("http://{edge}/trailers"))
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let client = h2c_client();
    let pending = tokio::spawn(async move { send(&client, req).await });
    tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
        .await
        .unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-req-trailer", "abc".parse().unwrap());
    tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
    drop(tx);
    let resp = pending.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{resp:?}");
    assert_eq!(resp.text(), "got 5 bytes");
    let trailers = resp.trailers.as_ref().expect("response trailers lost");
    assert_eq!(trailers.get("x-resp-trailer").unwrap(), "done");
    assert_eq!(
        trailers.get("x-echo-req-trailer").unwrap(),
        "abc",
        "request trailers lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_quotes_ipv6_clients() {
    let a = Upstream::echo("a").await;
    let admin = free_addr();
    let edge = free_port_on(std::net::Ipv6Addr::LOCALHOST.into());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: \"{edge}\"
    forwarded: true
    routes:
      - cluster: a
clusters:
{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    let echo = header_json(&get(&h1_client(), &format!("http://{edge}/v6")).await);
    assert_eq!(
        echoed_joined(&echo, "forwarded").as_deref(),
        Some("for=\"[::1]\";proto=http"),
        "RFC 7239 quotes IPv6 nodes: {echo}"
    );
    assert_eq!(
        echoed_joined(&echo, "x-forwarded-for").as_deref(),
        Some("::1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_keep_the_connection_usable() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    routes:\n      - cluster: a\nclusters:\n{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;

    // One HTTP/1.1 connection for everything: a framing mistake on a body-less response
    // (HEAD, 204, 304) would corrupt the requests after it.
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Body>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let cases: [(&str, Option<&str>, u16); 5] = [
        ("HEAD", None, 200),
        ("GET", Some("204"), 204),
        ("GET", Some("304"), 304),
        ("HEAD", None, 200),
        ("GET", None, 200),
    ];
    for (method, status, want) in cases {
        let mut req = Request::builder()
            .method(method)
            .uri("/bodiless")
            .header("host", edge.to_string());
        if let Some(s) = status {
            req = req.header("x-echo-status", s);
        }
        tokio::time::timeout(WAIT, sender.ready())
            .await
            .unwrap_or_else(|_| panic!("{method} {status:?}: connection not ready"))
            .unwrap_or_else(|e| panic!("{method} {status:?}: connection closed: {e}"));
        let resp = tokio::time::timeout(WAIT, sender.send_request(req.body(empty()).unwrap()))
            .await
            .unwrap_or_else(|_| panic!("{method} {status:?}: no response"))
            .unwrap_or_else(|e| panic!("{method} {status:?}: {e}"));
        assert_eq!(resp.status().as_u16(), want, "{method} {status:?}");
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        if want == 200 && method == "GET" {
            let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(echo["method"], "GET");
        } else {
            assert!(body.is_empty(), "{method} {status:?} got a body: {body:?}");
        }
    }
    assert_eq!(a.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_append_to_every_existing_line() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:\n  - name: edge\n    bind: {edge}\n    forwarded: true\n    routes:\n      - cluster: a\nclusters:\n{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    // Two header lines are one comma-separated list (RFC 9110 §5.3): the proxy appends to all.
    for client in [h1_client(), h2c_client()] {
        let req = Request::get(format!("http://{edge}/chain"))
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .header("forwarded", "for=1.2.3.4")
            .header("forwarded", "for=5.6.7.8")
            .body(empty())
            .unwrap();
        let echo = header_json(&send(&client, req).await);
        assert_eq!(
            echoed_joined(&echo, "x-forwarded-for").as_deref(),
            Some("1.2.3.4, 5.6.7.8, 127.0.0.1"),
            "{echo}"
        );
        assert_eq!(
            echoed_joined(&echo, "forwarded").as_deref(),
            Some("for=1.2.3.4, for=5.6.7.8, for=127.0.0.1;proto=http"),
            "{echo}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_cluster_reuses_connections_and_keeps_the_client_host() {
    let a = Upstream::echo("a").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes: [ {{ cluster: a }} ]
clusters:
{}",
        prelude(admin),
        cluster("a", "http1", &[a.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        for i in 0..5 {
            let echo = header_json(&get(&client, &format!("http://{edge}/seq/{i}?q=1")).await);
            assert_eq!(echo["version"], "HTTP/1.1");
            assert_eq!(
                echo["path"],
                format!("/seq/{i}"),
                "origin-form target: {echo}"
            );
            assert_eq!(echo["query"], "q=1");
            // h1 clients send Host; h2 clients send :authority, which becomes Host.
            assert_eq!(echoed_header(&echo, "host"), [edge.to_string()], "{echo}");
        }
    }
    assert_eq!(a.hits(), 10);
    assert_eq!(
        a.connections(),
        1,
        "one upstream connection serves sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cluster_gets_the_request_authority() {
    let b = Upstream::echo("b").await;
    let (admin, edge) = (free_addr(), free_addr());
    let yaml = format!(
        "{}listeners:
  - name: edge
    bind: {edge}
    routes:
      - match: {{ path_prefix: /api }}
        cluster: b
        rewrite: {{ path_prefix: /internal, host: backend.local }}
      - cluster: b
clusters:
{}",
        prelude(admin),
        cluster("b", "h2", &[b.addr]),
    );
    let _mesh = Mesh::start(admin, &yaml).await;
    for client in [h1_client(), h2c_client()] {
        // With a host rewrite, the h2 upstream's :authority is the new host.
        let echo = header_json(&get(&client, &format!("http://{edge}/api/users")).await);
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["path"], "/internal/users");
        assert_eq!(
            echo["authority"], "backend.local",
            "rewritten :authority: {echo}"
        );
        let host = echoed_header(&echo, "host");
        assert!(
            host.is_empty() || host == ["backend.local"],
            "a host header differing from :authority: {echo}"
        );

        // Without one, the client's host travels on as :authority.
        let echo = header_json(&get(&client, &format!("http://{edge}/plain")).await);
        assert_eq!(
            echo["authority"],
            edge.to_string(),
            "kept :authority: {echo}"
        );
        let host = echoed_header(&echo, "host");
        assert!(
            host.is_empty() || host == [edge.to_string()],
            "a host header differing from :authority: {echo}"
        );
    }
}
