//! Where each field of a parsed head sits, so that values can share the head's bytes once it
//! is split off the read buffer.

/// Offsets within a head: name start, name end, value start, value end.
pub(crate) type Span = (u32, u32, u32, u32);

/// Heads with up to this many fields keep their spans on the stack.
const ON_STACK: usize = 16;

/// Room for the spans of one head: on the stack for the usual few fields (zeroing room for all
/// [`crate::MAX_HEADERS`] cost ~100 instructions per head), on the heap past that.
pub(crate) struct Spans {
    small: [Span; ON_STACK],
    large: Vec<Span>,
}

impl Spans {
    pub(crate) fn new() -> Self {
        Spans {
            small: [(0, 0, 0, 0); ON_STACK],
            large: Vec::new(),
        }
    }

    /// Room for `count` spans.
    pub(crate) fn room(&mut self, count: usize) -> &mut [Span] {
        if count <= ON_STACK {
            &mut self.small[..count]
        } else {
            self.large.resize(count, (0, 0, 0, 0));
            &mut self.large[..]
        }
    }
}
