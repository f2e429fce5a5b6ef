/// Why a request cannot be framed or a response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} response header fields")]
    TooManyHeaders(usize),
    #[error("malformed response head: {0}")]
    MalformedHead(String),
    #[error("invalid content-length in the {0}")]
    InvalidContentLength(&'static str),
    #[error("a 101 (Switching Protocols) response to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error("the connection closed before the end of the response body")]
    Truncated,
}
