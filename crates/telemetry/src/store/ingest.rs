//! Indexing a batch a slice of items at a time, so that a large batch never holds the thread
//! that indexes it for long: the store's feed runs on the proxy's own runtime, between requests.
//!
//! [`Ingestion`] follows the export request's framing with the receiver's own [`wire::Walk`],
//! decodes each `Resource*` entry's resource once, and hands out one encoded item at a time for
//! the store to decode and index.

use super::model::{Attributes, attributes_bytes, attributes_owned, service_name};
use crate::otlp::wire::{self, Step, Walk, WireError, expect_message};
use crate::otlp::{Batch, Signal};
use bytes::Bytes;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use std::ops::Range;
use std::sync::Arc;

/// A batch part-way through being indexed.
#[derive(Debug)]
pub struct Ingestion {
    signal: Signal,
    payload: Bytes,
    walk: Walk,
    group: Option<Group>,
    /// Set once the batch is exhausted or failed.
    done: bool,
}

/// What the items of the `Resource*` entry being read share.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) resource: Arc<Attributes>,
    pub(crate) service: Arc<str>,
    /// Bytes of the shared resource charged to each span of the entry.
    pub(crate) share: usize,
}

impl Ingestion {
    /// Starts indexing `batch` (sharing its payload).
    pub fn new(batch: &Batch) -> Ingestion {
        Ingestion {
            signal: batch.signal,
            payload: batch.payload.clone(),
            walk: Walk::default(),
            group: None,
            done: false,
        }
    }

    /// The batch's signal.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// Calls `f` with each next item's bytes and its group until the items handed out reach
    /// `max_bytes` (encoded; at least one item). `Ok(true)` when it stopped there (there may be
    /// more), `Ok(false)` once the batch is done; after an error (the items before it were
    /// handed out) the batch is done too.
    pub(crate) fn take(
        &mut self,
        max_bytes: usize,
        mut f: impl FnMut(&[u8], &Group),
    ) -> Result<bool, WireError> {
        let mut taken = 0usize;
        // Every item consumes payload bytes, so this ends within the payload's length.
        while !self.done {
            match self.next_item() {
                Ok(Some(item)) => {
                    taken += item.len();
                    if let Some(g) = &self.group {
                        f(&self.payload[item], g);
                    }
                    if taken >= max_bytes {
                        return Ok(true);
                    }
                }
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
        Ok(false)
    }

    /// The next item's bytes in the payload, reading each group's resource as it begins.
    fn next_item(&mut self) -> Result<Option<Range<usize>>, WireError> {
        loop {
            match self.walk.next(&self.payload)? {
                None => return Ok(None),
                Some(Step::Group(entry, at)) => {
                    self.group = Some(Group::read(self.signal, entry, at)?);
                }
                Some(Step::Resource(..)) => {}
                Some(Step::Item(item, at)) => return Ok(Some(at..at + item.len())),
            }
        }
    }
}

impl Group {
    /// Reads a `Resource*` entry's resource (merging repeats, as a full decode does) and, for
    /// spans, counts its items to spread the resource's size over them.
    fn read(signal: Signal, entry: &[u8], at: usize) -> Result<Group, WireError> {
        let mut resource = None::<Resource>;
        let mut items = 0usize;
        wire::for_each_field(entry, at, |f, v, at| {
            match f {
                1 => {
                    let b = expect_message(v, at)?;
                    if resource.get_or_insert_default().merge(b).is_err() {
                        return Err(WireError {
                            offset: at,
                            reason: "resource does not decode",
                        });
                    }
                }
                2 if signal == Signal::Traces => {
                    let scope = expect_message(v, at)?;
                    wire::for_each_field(scope, at, |f, _, _| {
                        items += usize::from(f == 2);
                        Ok(())
                    })?;
                }
                _ => {}
            }
            Ok(())
        })?;
        let attrs = resource
            .map(|r| attributes_owned(r.attributes))
            .unwrap_or_default();
        let service = service_name(&attrs);
        let share = (attributes_bytes(&attrs) + service.len()).div_ceil(items.max(1));
        Ok(Group {
            resource: Arc::new(attrs),
            service,
            share,
        })
    }
}
