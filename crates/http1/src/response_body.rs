//! Response bodies, framed as they arrive.

use crate::{Error, ResponseFraming};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// A trailer section larger than this is refused.
const MAX_TRAILERS: usize = 64 * 1024;
/// Trailer fields parsed at most.
const MAX_TRAILER_FIELDS: usize = 32;

/// What [`BodyDecoder::decode`] took from the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Body bytes (never empty), sharing the buffer's memory.
    Data(Bytes),
    /// The trailer fields of a chunked body, which has ended.
    Trailers(HeaderMap),
    /// The body has ended (and stays ended).
    End,
    /// The buffer holds no more of the body: read more, or call [`BodyDecoder::eof`].
    NeedMore,
}

/// Takes one response body off a connection's read buffer, leaving what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Bytes still to come.
    Length(u64),
    /// Next: a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk still to come.
    ChunkData(u64),
    /// Next: the CRLF after a chunk's data.
    ChunkDataEnd,
    /// Next: the trailer section (possibly empty) after the last chunk.
    Trailers,
    UntilClose,
    Done,
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing` says.
    pub fn new(framing: ResponseFraming) -> Self {
        let state = match framing {
            ResponseFraming::Empty | ResponseFraming::Length(0) => State::Done,
            ResponseFraming::Length(n) => State::Length(n),
            ResponseFraming::Chunked => State::ChunkSize,
            ResponseFraming::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// True once the whole body has been taken: the connection may carry the next exchange.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next part of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let (data, left) = take_up_to(buf, n);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(size) = chunk_size(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = match size {
                        0 => State::Trailers,
                        n => State::ChunkData(n),
                    };
                }
                State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let (data, left) = take_up_to(buf, n);
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(Error::Chunked("no CRLF after a chunk's data"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Chunked("no CRLF after a chunk's data"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(trailers) = trailers(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = State::Done;
                    return Ok(match trailers {
                        Some(t) => Decoded::Trailers(t),
                        None => Decoded::End,
                    });
                }
            }
        }
    }

    /// The server closed the connection: the end of a body delimited by the close, an error for
    /// any other body not yet complete.
    pub fn eof(&mut self) -> Result<Decoded, Error> {
        match self.state {
            State::Done => Ok(Decoded::End),
            State::UntilClose => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            _ => Err(Error::Truncated),
        }
    }
}

/// Up to `n` bytes off the front of `buf`, and how many are still to come after them.
fn take_up_to(buf: &mut BytesMut, n: u64) -> (Bytes, u64) {
    let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    (buf.split_to(take).freeze(), n - take as u64)
}

/// Parses and removes a chunk-size line (`size[;extensions]CRLF`); `None` while incomplete.
fn chunk_size(buf: &mut BytesMut) -> Result<Option<u64>, Error> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(Error::Chunked("chunk-size line too long"));
        }
        if window.contains(&b'\n') {
            return Err(Error::Chunked("bare LF in a chunk-size line"));
        }
        return Ok(None);
    };
    let line = &window[..end];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Error::Chunked("chunk size is not hexadecimal"));
    }
    if digits > 16 {
        return Err(Error::Chunked("chunk size too large"));
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).unwrap_or(0);
        size = (size << 4) | u64::from(d);
    }
    // After the size: optional whitespace, then nothing or `;` and extensions (ignored).
    let rest = &line[digits..];
    let after_ws = rest.iter().position(|&b| b != b' ' && b != b'\t');
    match after_ws.map(|i| rest[i]) {
        None | Some(b';') => {}
        Some(_) => return Err(Error::Chunked("unexpected bytes after the chunk size")),
    }
    if rest.contains(&b'\n') || rest.contains(&b'\r') {
        return Err(Error::Chunked("bare CR or LF in a chunk-size line"));
    }
    buf.advance(end + 2);
    Ok(Some(size))
}

/// Parses and removes the trailer section after the last chunk: `Some(None)` for an empty one,
/// `Some(Some(fields))` otherwise, `None` while incomplete.
fn trailers(buf: &mut BytesMut) -> Result<Option<Option<HeaderMap>>, Error> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if &buf[..2] == b"\r\n" {
        buf.advance(2);
        return Ok(Some(None));
    }
    let window = &buf[..buf.len().min(MAX_TRAILERS)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_TRAILERS {
            return Err(Error::Chunked("trailer section too large"));
        }
        return Ok(None);
    };
    let section = &window[..end + 4];
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let parsed = httparse::parse_headers(section, &mut fields)
        .map_err(|_| Error::Chunked("malformed trailer section"))?;
    let httparse::Status::Complete((len, fields)) = parsed else {
        return Err(Error::Chunked("malformed trailer section"));
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| Error::Chunked("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| Error::Chunked("invalid trailer value"))?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Some(Some(map)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A body's data, its trailers, and what was left in the buffer after its end.
    type Decoding = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Feeds `wire` in pieces of the given sizes, decoding as it goes; the body's data, its
    /// trailers, and what is left in the buffer after the body's end.
    fn run(
        framing: ResponseFraming,
        wire: &[u8],
        pieces: &[usize],
        close_at_end: bool,
    ) -> Result<Decoding, Error> {
        let mut d = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        let mut sizes = pieces.iter().copied().cycle();
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => {
                    assert!(!b.is_empty());
                    data.extend_from_slice(&b);
                }
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf.to_vec())),
                Decoded::NeedMore if fed < wire.len() => {
                    let n = sizes.next().unwrap_or(1).max(1).min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Decoded::NeedMore if close_at_end => match d.eof()? {
                    Decoded::End => return Ok((data, trailers, buf.to_vec())),
                    other => panic!("eof gave {other:?}"),
                },
                Decoded::NeedMore => panic!("decoder wants more than the message has"),
            }
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_leaves_the_next_response() {
        let (data, trailers, rest) =
            run(ResponseFraming::Length(5), b"helloHTTP/1.1", &[2, 7], false).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"hello"[..], None));
        // Fed as 2 + 7 bytes: the next response's first 4 bytes came with the body's end.
        assert_eq!(rest, b"HTTP");
    }

    #[test]
    fn a_short_body_is_truncated_at_eof_and_a_close_delimited_one_ends_there() {
        let mut d = BodyDecoder::new(ResponseFraming::Length(5));
        let mut buf = BytesMut::from(&b"hel"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"hel"))
        );
        assert_eq!(d.remaining(), Some(2));
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::NeedMore);
        assert_eq!(d.eof(), Err(Error::Truncated));
        let (data, _, _) = run(ResponseFraming::UntilClose, b"all of it", &[4], true).unwrap();
        assert_eq!(data, b"all of it");
        let mut chunked = BodyDecoder::new(ResponseFraming::Chunked);
        assert_eq!(chunked.eof(), Err(Error::Truncated));
    }

    #[test]
    fn an_empty_body_is_done_at_once() {
        let mut d = BodyDecoder::new(ResponseFraming::Empty);
        assert!(d.is_done());
        let mut buf = BytesMut::from(&b"HTTP/1.1 200"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(buf.len(), 12);
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers() {
        let wire =
            b"5;name=\"v\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-sum: 42\r\nx-b: 1\r\n\r\nNEXT";
        let (data, trailers, rest) =
            run(ResponseFraming::Chunked, wire, &[wire.len()], false).unwrap();
        assert_eq!(data, b"hello world");
        let t = trailers.unwrap();
        assert_eq!(
            (t["x-sum"].to_str().unwrap(), t["x-b"].to_str().unwrap()),
            ("42", "1")
        );
        assert_eq!(rest, b"NEXT");
        // Byte by byte: the same body, the next message not fed yet.
        let (data, trailers, rest) = run(ResponseFraming::Chunked, wire, &[1], false).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.map(|t| t.len()), Some(2));
        assert!(rest.is_empty());
        let (data, trailers, rest) = run(
            ResponseFraming::Chunked,
            b"A\r\n0123456789\r\n0\r\n\r\n",
            &[3],
            false,
        )
        .unwrap();
        assert_eq!(
            (data.as_slice(), trailers, rest.as_slice()),
            (&b"0123456789"[..], None, &b""[..])
        );
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for (wire, why) in [
            (&b"x\r\n"[..], "chunk size is not hexadecimal"),
            (b"\r\n", "chunk size is not hexadecimal"),
            (b"11111111111111111\r\n", "chunk size too large"),
            (b"5 x\r\nhello\r\n", "unexpected bytes after the chunk size"),
            (b"5\nhello", "bare LF in a chunk-size line"),
            (b"5\r\nhelloXY0\r\n\r\n", "no CRLF after a chunk's data"),
            (b"0\r\nnot a field\r\n\r\n", "malformed trailer section"),
        ] {
            let e = run(ResponseFraming::Chunked, wire, &[64], false).unwrap_err();
            assert_eq!(
                e,
                Error::Chunked(why),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE];
        assert_eq!(
            run(ResponseFraming::Chunked, &long, &[MAX_CHUNK_LINE], false).unwrap_err(),
            Error::Chunked("chunk-size line too long")
        );
        let mut ext = b"1;".to_vec();
        ext.extend(vec![b'e'; MAX_CHUNK_LINE]);
        assert_eq!(
            run(ResponseFraming::Chunked, &ext, &[MAX_CHUNK_LINE + 2], false).unwrap_err(),
            Error::Chunked("chunk-size line too long")
        );
    }

    proptest! {
        /// Any body cut into any chunks, with or without trailers, fed in any pieces, decodes to
        /// the same bytes and trailers, and leaves the next message untouched.
        #[test]
        fn chunked_bodies_decode_whatever_the_pieces(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(1usize..700, 1..8),
            pieces in proptest::collection::vec(1usize..200, 1..8),
            with_trailers in any::<bool>(),
            upper in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            let mut at = 0;
            let mut sizes = cuts.iter().copied().cycle();
            while at < body.len() {
                let n = sizes.next().unwrap_or(1).min(body.len() - at);
                let size = if upper { format!("{n:X}") } else { format!("{n:x}") };
                wire.extend_from_slice(size.as_bytes());
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&body[at..at + n]);
                wire.extend_from_slice(b"\r\n");
                at += n;
            }
            wire.extend_from_slice(b"0\r\n");
            if with_trailers {
                wire.extend_from_slice(b"grpc-status: 0\r\n");
            }
            wire.extend_from_slice(b"\r\nHTTP/1.1 200 OK\r\n");
            let (data, trailers, rest) = run(ResponseFraming::Chunked, &wire, &pieces, false).unwrap();
            prop_assert_eq!(data, body);
            prop_assert_eq!(trailers.map(|t| t["grpc-status"].clone()), with_trailers.then(|| HeaderValue::from_static("0")));
            // What the decoder left is a prefix of the next message (it may not all have been fed).
            prop_assert!(b"HTTP/1.1 200 OK\r\n".starts_with(&rest));
        }

        /// A length-delimited body takes exactly its length, whatever the pieces.
        #[test]
        fn length_bodies_take_exactly_their_length(
            body in proptest::collection::vec(any::<u8>(), 1..3000),
            pieces in proptest::collection::vec(1usize..500, 1..8),
        ) {
            let mut wire = body.clone();
            wire.extend_from_slice(b"NEXT");
            let (data, _, rest) = run(ResponseFraming::Length(body.len() as u64), &wire, &pieces, false).unwrap();
            prop_assert_eq!(data, body);
            prop_assert!(b"NEXT".starts_with(&rest));
        }
    }
}
