//! The HTTP/1.1 wire format (RFC 9112), without I/O. For an upstream client: request heads and
//! chunked request bodies written into caller-owned buffers, response heads parsed off the
//! connection's read buffer, and response bodies framed as they arrive. For a downstream
//! server: heads of requests without a body parsed, and response heads framed as hyper's
//! server frames them (anything less simple is left to hyper).
//!
//! Why not hyper's client: it drives each connection from a task of its own, reached through a
//! dispatch channel, and builds a body channel per response; for a proxy that forwards small
//! requests that is about a third of its instructions per request and a scheduling hop in each
//! direction (`docs/benchmarks.md`). With the wire format on its own, the request's task can
//! write and read the upstream socket itself. Parsing is httparse's, as in hyper.

#![forbid(unsafe_code)]

mod error;
mod fields;
mod request;
mod response;
mod response_body;
mod server;
mod spans;

pub use error::Error;
pub use request::{
    BodySize, RequestFraming, encode_chunk_head, encode_last_chunk, encode_request_head,
};
pub use response::{
    HeadLimits, MAX_HEADERS, ResponseFraming, ResponseHead, parse_response_head,
    parse_response_head_reusing,
};
pub use response_body::{BodyDecoder, Decoded};
pub use server::{
    ParsedRequest, RequestContext, RequestHead, ResponseWrite, encode_response_head,
    parse_request_head, parse_request_head_reusing,
};
