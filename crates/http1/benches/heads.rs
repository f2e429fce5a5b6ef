//! Cost of the four head operations of one proxied HTTP/1.1 exchange: parse the client's
//! request head, write the upstream request head, parse the upstream's response head, write the
//! response head to the client. Baseline in the same run: httparse alone on the same two heads
//! (bytes to field slices, no `http` types), the floor any parser built on it starts from.

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Method, Version};
use otlp_mesh_http1::{
    BodySize, HeadLimits, ParsedRequest, RequestContext, encode_request_head, encode_response_head,
    parse_request_head, parse_response_head,
};
use std::hint::black_box;

const REQUEST: &[u8] = b"GET /api/orders/17?expand=items HTTP/1.1\r\n\
host: shop.example\r\n\
user-agent: curl/8.5.0\r\n\
accept: */*\r\n\
traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
content-type: application/json\r\n\
content-length: 27\r\n\
date: Sun, 06 Dec 2026 10:00:00 GMT\r\n\
server: upstream\r\n\r\n";

fn httparse_both() -> usize {
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut fields);
    let a = match req.parse(REQUEST) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => 0,
    };
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut fields);
    let b = match resp.parse(RESPONSE) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => 0,
    };
    a + b
}

fn date() -> HeaderValue {
    HeaderValue::from_static("Sun, 06 Dec 2026 10:00:00 GMT")
}

/// The whole exchange's heads; `bufs` are the connection's read buffers (the two heads) and
/// `out` its write buffer.
fn exchange(bufs: (BytesMut, BytesMut), out: &mut BytesMut) -> usize {
    let (mut down, mut up) = bufs;
    let ParsedRequest::Simple(head) = parse_request_head(&mut down, 64 * 1024) else {
        return 0;
    };
    let (parts, ()) = head.request.into_parts();
    out.clear();
    let _ = encode_request_head(&parts, BodySize::Empty, out);
    let Ok(Some(resp)) = parse_response_head(&mut up, &parts.method, &HeadLimits::default()) else {
        return 0;
    };
    out.clear();
    let write = encode_response_head(
        resp.status,
        &resp.headers,
        RequestContext {
            method: &Method::GET,
            version: Version::HTTP_11,
            keep_alive: head.keep_alive,
        },
        BodySize::Exact(27),
        date,
        out,
    );
    black_box(write.keep_alive);
    out.len()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("heads");
    g.bench_function("baseline_httparse_request_and_response", |b| {
        b.iter(|| black_box(httparse_both()))
    });
    // The read buffers are made outside the measured time: the proxy reads into a buffer it
    // keeps, so their allocation is not part of a request.
    let buffers = || (BytesMut::from(REQUEST), BytesMut::from(RESPONSE));
    let mut out = BytesMut::with_capacity(4096);
    g.bench_function("exchange", |b| {
        b.iter_batched(
            buffers,
            |bufs| black_box(exchange(bufs, &mut out)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_request_head", |b| {
        b.iter_batched(
            || BytesMut::from(REQUEST),
            |mut buf| {
                black_box(matches!(
                    parse_request_head(&mut buf, 64 * 1024),
                    ParsedRequest::Simple(_)
                ))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_response_head", |b| {
        b.iter_batched(
            || BytesMut::from(RESPONSE),
            |mut buf| {
                black_box(
                    parse_response_head(&mut buf, &Method::GET, &HeadLimits::default())
                        .is_ok_and(|h| h.is_some()),
                )
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
