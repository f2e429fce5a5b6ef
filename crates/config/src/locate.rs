//! Names the field path of a config error after the fact, without tracking paths while parsing.
//!
//! `parse_str` deserializes the config straight from the YAML reader. Wrapping that reader in
//! `serde_path_to_error` (as it once was) instantiates the whole config model's serde code a
//! second time over the wrapper, about 1.4 MB of machine code, and that code is mapped into the
//! proxy's memory at start-up. Errors are rare, so the path is worked out only when one occurs:
//!
//! 1. Errors that do not depend on the config's types (YAML syntax, unknown anchors) happen just
//!    the same when the document is read as untyped YAML ([`Probe`]), so reading it again that
//!    way under `serde_path_to_error` names exactly the path the typed read stopped at. The
//!    wrapper is then instantiated for one small type only.
//! 2. Any other error is about one node of the document: the YAML events are walked again
//!    ([`nodes`]) and the error's line and column pick the node, with the rules below for where
//!    serde-saphyr places each kind of error (e.g. a missing field at the mapping's first key).
//!
//! The paths are the ones `serde_path_to_error` gave over the typed model; a differential test
//! against it (random edits of real configs, about 200 000 rejected documents) found no
//! difference, except that the `value` segments of [`crate::Located`] are gone for good: a list
//! inside one is now written `split[0]`, not `split.value[0]` as the old clean-up left it.

use granit_parser::{Event, Parser, StructureStyle};
use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::fmt;

/// The field path of the error at `line`:`column` with `message`, such as
/// `listeners[0].routes[1].split[0].cluster`; empty for the document itself.
pub(crate) fn error_path(text: &str, line: u64, column: u64, message: &str) -> String {
    probe_path(text, line, column, message)
        .unwrap_or_else(|| node_path(text, line, column, message))
}

/// Reads `text` as untyped YAML; if that fails with the same error, the path it failed at.
fn probe_path(text: &str, line: u64, column: u64, message: &str) -> Option<String> {
    let mut found = None;
    let _ = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, Probe>(de).map_err(|e| {
            let at = e.inner().location().map(|l| (l.line(), l.column()));
            let same = at.unwrap_or((0, 0)) == (line, column)
                && crate::load::plain_message(e.inner()) == message;
            if same {
                // The probe has no `Located` wrappers, so no `value` segments to drop.
                let path = e.path().to_string();
                found = Some(if path == "." { String::new() } else { path });
            }
            <serde_saphyr::Error as de::Error>::custom("probe")
        })
    });
    found
}

/// Any YAML value, read the way the config's own types read it (keys by name).
struct Probe;

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor)
    }
}

struct ProbeVisitor;

impl<'de> Visitor<'de> for ProbeVisitor {
    type Value = Probe;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_none<E: de::Error>(self) -> Result<Probe, E> {
        Ok(Probe)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Probe, D::Error> {
        Probe::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Probe, D::Error> {
        Probe::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Probe, A::Error> {
        while s.next_element::<Probe>()?.is_some() {}
        Ok(Probe)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Probe, A::Error> {
        while m.next_key::<Key>()?.is_some() {
            m.next_value::<Probe>()?;
        }
        Ok(Probe)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, e: A) -> Result<Probe, A::Error> {
        let (Probe, v) = e.variant::<Probe>()?;
        v.newtype_variant::<Probe>()
    }
}

/// A mapping key, read by name as struct fields and string-keyed maps read theirs (so `on:` is
/// the key `on`, not `true`).
struct Key;

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Key, E> {
        Ok(Key)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Key, E> {
        Ok(Key)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
        Ok(Key)
    }
}

/// One YAML node (or container end) with the path a reader of the typed model gives it.
#[derive(Debug)]
struct Node {
    line: u64,
    /// 1-based, as serde-saphyr reports columns.
    column: u64,
    path: String,
    /// For a key: the mapping it belongs to.
    parent: String,
    is_key: bool,
    is_map: bool,
    is_seq: bool,
    /// A block sequence listed again at its first item, where serde-saphyr reports it.
    at_first_item: bool,
}

impl Node {
    fn is_container(&self) -> bool {
        self.is_map || self.is_seq
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        expect_key: bool,
    },
    Seq {
        path: String,
        next: usize,
        block: bool,
    },
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Every node of the document in order (container ends last), up to the first syntax error.
fn nodes(text: &str) -> Vec<Node> {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((ev, span)) = item else { break };
        let (line, column) = (span.start.line() as u64, span.start.col() as u64 + 1);
        let node = |path: String, parent: String, is_key: bool| Node {
            line,
            column,
            path,
            parent,
            is_key,
            is_map: false,
            is_seq: false,
            at_first_item: false,
        };
        match ev {
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Map { path, .. } | Frame::Seq { path, .. }) = stack.pop() {
                    ends.push(node(path, String::new(), false));
                }
                end_value(&mut stack);
                continue;
            }
            Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) => {}
            Event::Alias(..) => {}
            _ => continue,
        }
        let (path, parent, is_key) = match stack.last_mut() {
            None => (String::new(), String::new(), false),
            Some(Frame::Seq { path, next, block }) => {
                if *next == 0 && *block {
                    let mut n = node(path.clone(), String::new(), false);
                    n.is_seq = true;
                    n.at_first_item = true;
                    out.push(n);
                }
                let p = format!("{path}[{next}]");
                *next += 1;
                (p, path.clone(), false)
            }
            Some(Frame::Map {
                path,
                key,
                expect_key,
            }) => {
                if *expect_key {
                    *key = match &ev {
                        Event::Scalar(v, ..) => Some(v.to_string()),
                        _ => None,
                    };
                    let k = key.as_deref().unwrap_or("?");
                    (join_key(path, k), path.clone(), true)
                } else {
                    let k = key.as_deref().unwrap_or("?");
                    (join_key(path, k), path.clone(), false)
                }
            }
        };
        let mut n = node(path.clone(), parent, is_key);
        match ev {
            Event::MappingStart(..) => {
                n.is_map = true;
                stack.push(Frame::Map {
                    path,
                    key: None,
                    expect_key: true,
                });
            }
            Event::SequenceStart(style, ..) => {
                n.is_seq = true;
                stack.push(Frame::Seq {
                    path,
                    next: 0,
                    block: style == StructureStyle::Block,
                });
            }
            _ => end_value(&mut stack),
        }
        out.push(n);
    }
    out.extend(ends);
    out
}

/// A node of the innermost mapping has been read: the next one is a key, or a value.
fn end_value(stack: &mut [Frame]) {
    if let Some(Frame::Map {
        key, expect_key, ..
    }) = stack.last_mut()
    {
        if *expect_key {
            *expect_key = false;
        } else {
            *expect_key = true;
            *key = None;
        }
    }
}

/// The path of the node an error at `line`:`column` is about.
fn node_path(text: &str, line: u64, column: u64, message: &str) -> String {
    let nodes = nodes(text);
    // Outermost first: a block mapping starts where its first key does.
    let all: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.line == line && n.column == column)
        .collect();
    let innermost = |f: &dyn Fn(&Node) -> bool| all.iter().rev().find(|n| f(n)).map(|n| &n.path);
    // A node of the wrong kind: the innermost node at the spot that can be it.
    let wrong_kind = if message.starts_with("expected sequence start") {
        innermost(&|n| !n.is_seq && !n.is_key)
    } else if message.starts_with("expected mapping start") {
        innermost(&|n| !n.is_map && !n.is_key)
    } else if message.starts_with("externally tagged enum expected") {
        innermost(&|n| n.is_seq)
    } else if message.starts_with("expected ") {
        innermost(&|n| n.is_container())
    } else {
        None
    };
    if let Some(path) = wrong_kind {
        return path.clone();
    }
    let at: Vec<&Node> = all.into_iter().filter(|n| !n.at_first_item).collect();
    let Some(first) = at.first() else {
        return String::new();
    };
    let key = at.iter().find(|n| n.is_key);
    let container = at.iter().rev().find(|n| n.is_container());
    // Errors raised by a mapping's own visitor (rather than by one of its keys or values) name
    // the mapping: serde's missing fields, and the hand-written `StaticEndpoint` and
    // `ValueMatch` readers.
    let about_mapping = message.starts_with("missing field")
        || message.contains("expected one of address, weight")
        || message.contains("expected one of exact, regex, present")
        || message.starts_with("a condition takes exactly one of")
        || message.starts_with("empty condition");
    if about_mapping {
        if let Some(k) = key {
            return k.parent.clone();
        }
        if let Some(c) = container {
            return c.path.clone();
        }
        return first.path.clone();
    }
    if let Some(k) = key
        && message.starts_with("duplicate mapping key")
    {
        return join_key(&k.parent, "?");
    }
    if let Some(k) = key
        && message.starts_with("unknown variant")
    {
        return k.parent.clone();
    }
    if let Some(c) = container
        && message.starts_with("invalid type: map")
    {
        return c.path.clone();
    }
    // A value's error is reported at its key.
    if let Some(k) = key {
        return k.path.clone();
    }
    first.path.clone()
}
