//! The persistent queue: a write-ahead log of batches on disk, so that nothing `enqueue`
//! acknowledged is lost when the process dies (`kill -9`) or the backend is down for long.
//!
//! Files in the queue directory:
//! - `lock` — held with an exclusive file lock while a queue has the directory open.
//! - `<first-seq, 20 digits>.wal` — segments. Each starts with the 8-byte magic `OMWAL001`, then
//!   records `[payload_len u32 LE][crc32 u32 LE][signal u8][items u64 LE][payload]`, the CRC-32
//!   covering signal, items and payload. Record `n` of a segment has sequence number
//!   `first-seq + n`. A new segment starts when the active one passes the segment size.
//! - `ack` — `[seq u64 LE][crc32 u32 LE]`: the first sequence number not yet acknowledged,
//!   replaced atomically (write `ack.tmp`, rename). It is not fsynced: losing it only replays
//!   (duplicates) records, never loses them.
//!
//! On open, every segment is verified; the first bad record (torn write, bit rot) and all bytes
//! after it are cut off and logged. Records at or after the ack position are loaded again and
//! counted as replayed. Records are read back into memory ([`Pending`]) up to a budget; the rest
//! waits on disk. Acknowledgements may finish out of order (requests run concurrently), but the
//! ack position only advances over a contiguous prefix of finished records.

use super::queue::{Entry, Pending, QueueFull};
use super::stats::Stats;
use crate::{Batch, Signal};
use bytes::Bytes;
use otlp_mesh_config::telemetry::FsyncPolicy;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

const MAGIC: &[u8; 8] = b"OMWAL001";
const MAGIC_LEN: u64 = MAGIC.len() as u64;
/// `payload_len` + `crc32` + `signal` + `items`.
const HEADER: usize = 4 + 4 + 1 + 8;

/// Sizing and durability of a write-ahead log.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalOptions {
    /// Bound on unacknowledged record bytes; appends past it are refused.
    pub max_bytes: u64,
    /// A new segment starts past this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Bytes of records held in memory (queued for sending or in flight).
    pub load_budget: u64,
}

/// A record loaded into memory and not yet acknowledged.
#[derive(Debug)]
struct Loaded {
    signal: Signal,
    items: u64,
    payload: u64,
    done: bool,
}

/// Where the next record to load is.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    base: u64,
    offset: u64,
    seq: u64,
}

struct State {
    _lock: File,
    /// Segment first sequence number → valid length in bytes.
    segments: BTreeMap<u64, u64>,
    active: File,
    active_base: u64,
    next_seq: u64,
    reader: Cursor,
    reader_file: Option<(u64, BufReader<File>)>,
    outstanding: BTreeMap<u64, Loaded>,
    loaded_bytes: u64,
    acked: u64,
    dirty: bool,
}

/// A write-ahead log in one directory.
pub(crate) struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    state: Mutex<Option<State>>,
    /// Loaded records waiting to be taken by the sender.
    pub pending: Mutex<Pending>,
    stats: Arc<Stats>,
    /// Unacknowledged record bytes plus reservations (appends about to happen), against
    /// `opts.max_bytes`.
    used: AtomicU64,
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.wal"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal_from(b: u8) -> Option<Signal> {
    Signal::ALL.get(usize::from(b)).copied()
}

fn encode(batch: &Batch) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEADER + batch.len());
    rec.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.push(batch.signal.index() as u8);
    rec.extend_from_slice(&batch.items.to_le_bytes());
    rec.extend_from_slice(&batch.payload);
    let crc = crc32fast::hash(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    rec
}

enum Read1 {
    Record(Batch),
    End,
    Corrupt(&'static str),
}

/// Reads one record; `remaining` bytes are left in the segment from here.
fn read_record(r: &mut impl Read, remaining: u64) -> io::Result<Read1> {
    if remaining == 0 {
        return Ok(Read1::End);
    }
    let mut h = [0u8; HEADER];
    if remaining < HEADER as u64 {
        return Ok(Read1::Corrupt("truncated record header"));
    }
    r.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if HEADER as u64 + len > remaining {
        return Ok(Read1::Corrupt("record runs past the end of the segment"));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[8..]);
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Ok(Read1::Corrupt("checksum mismatch"));
    }
    let Some(signal) = signal_from(h[8]) else {
        return Ok(Read1::Corrupt("unknown signal"));
    };
    let mut items = [0u8; 8];
    items.copy_from_slice(&h[9..17]);
    Ok(Read1::Record(Batch::new(
        signal,
        Bytes::from(payload),
        u64::from_le_bytes(items),
    )))
}

fn read_ack(dir: &Path) -> Option<u64> {
    let raw = std::fs::read(dir.join("ack")).ok()?;
    if raw.len() != 12 {
        tracing::warn!(dir = %dir.display(), "persistent queue: ack file has the wrong size; replaying from the oldest segment");
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&raw[..8]);
    let crc = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    if crc32fast::hash(&seq) != crc {
        tracing::warn!(dir = %dir.display(), "persistent queue: ack file checksum mismatch; replaying from the oldest segment");
        return None;
    }
    Some(u64::from_le_bytes(seq))
}

fn write_ack(dir: &Path, seq: u64) -> io::Result<()> {
    let mut raw = seq.to_le_bytes().to_vec();
    raw.extend_from_slice(&crc32fast::hash(&seq.to_le_bytes()).to_le_bytes());
    let tmp = dir.join("ack.tmp");
    std::fs::write(&tmp, &raw)?;
    std::fs::rename(&tmp, dir.join("ack"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_segment(dir: &Path, base: u64, fsync: FsyncPolicy) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, base))?;
    f.write_all(MAGIC)?;
    if fsync == FsyncPolicy::Always {
        f.sync_data()?;
        sync_dir(dir)?;
    }
    Ok(f)
}

/// What opening found in one segment.
struct Scanned {
    len: u64,
    count: u64,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering from a torn tail.
    pub fn open(dir: &Path, opts: WalOptions, stats: Arc<Stats>) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        lock_file.try_lock().map_err(|e| {
            io::Error::other(format!(
                "queue directory {} is in use by another exporter or process ({e})",
                dir.display()
            ))
        })?;
        let ack_file = read_ack(dir);
        let mut bases: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".wal")?.parse::<u64>().ok()
            })
            .collect();
        bases.sort_unstable();
        let acked = ack_file.unwrap_or_else(|| bases.first().copied().unwrap_or(0));

        let mut segments = BTreeMap::new();
        let mut next_seq = acked;
        let mut reader: Option<Cursor> = None;
        let mut unacked_bytes = 0;
        let mut replay = [(0u64, 0u64); 3];
        let mut counts = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let is_last = i + 1 == bases.len();
            let scanned = Self::scan(dir, base, acked, |seq, offset, batch| {
                if seq >= acked {
                    if reader.is_none() {
                        reader = Some(Cursor { base, offset, seq });
                    }
                    unacked_bytes += (HEADER + batch.len()) as u64;
                    let r = &mut replay[batch.signal.index()];
                    r.0 += batch.items;
                    r.1 += batch.len() as u64;
                }
            })?;
            let end = base + scanned.count;
            // A segment wholly before the ack position is done with (the last one is kept
            // when it is where appends continue).
            let next_base = bases.get(i + 1).copied();
            if next_base.is_some_and(|n| n <= acked) || (is_last && end < acked) {
                std::fs::remove_file(segment_path(dir, base))?;
                continue;
            }
            segments.insert(base, scanned.len);
            counts.insert(base, scanned.count);
            next_seq = next_seq.max(end);
        }
        for s in Signal::ALL {
            let (items, bytes) = replay[s.index()];
            if items > 0 || bytes > 0 {
                stats.queued(s, items, bytes);
                stats
                    .sig(s)
                    .replayed
                    .fetch_add(items, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(dir = %dir.display(), signal = %s, items, bytes, "persistent queue: replaying unacknowledged {}", s.item_name());
            }
        }
        // Appends continue in the last segment when its numbering ends where the log does.
        let last = segments.last_key_value().map(|(&b, &l)| (b, l));
        let (active, active_base) = match last {
            Some((base, len)) if counts.get(&base).is_some_and(|c| base + c == next_seq) => {
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(segment_path(dir, base))?;
                f.seek(SeekFrom::Start(len))?;
                (f, base)
            }
            _ => {
                let f = create_segment(dir, next_seq, opts.fsync)?;
                segments.insert(next_seq, MAGIC_LEN);
                (f, next_seq)
            }
        };
        let active_len = segments.get(&active_base).copied().unwrap_or(MAGIC_LEN);
        let reader = reader.unwrap_or(Cursor {
            base: active_base,
            offset: active_len,
            seq: next_seq,
        });
        let state = State {
            _lock: lock_file,
            segments,
            active,
            active_base,
            next_seq,
            reader,
            reader_file: None,
            outstanding: BTreeMap::new(),
            loaded_bytes: 0,
            acked,
            dirty: false,
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            state: Mutex::new(Some(state)),
            pending: Mutex::new(Pending::default()),
            stats,
            used: AtomicU64::new(unacked_bytes),
        };
        wal.refill()?;
        Ok(wal)
    }

    /// Verifies segment `base`, cutting off a bad tail; calls `each(seq, offset, batch)` per
    /// record at or after `from`.
    fn scan(
        dir: &Path,
        base: u64,
        from: u64,
        mut each: impl FnMut(u64, u64, &Batch),
    ) -> io::Result<Scanned> {
        let path = segment_path(dir, base);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(256 << 10, &file);
        let mut magic = [0u8; 8];
        let magic_ok = file_len >= MAGIC_LEN && {
            r.read_exact(&mut magic)?;
            &magic == MAGIC
        };
        if !magic_ok {
            tracing::warn!(segment = %path.display(), discarded_bytes = file_len, "persistent queue: segment has no valid header; discarding its contents");
            file.set_len(0)?;
            let mut w = &file;
            w.seek(SeekFrom::Start(0))?;
            w.write_all(MAGIC)?;
            w.sync_data()?;
            return Ok(Scanned {
                len: MAGIC_LEN,
                count: 0,
            });
        }
        let mut offset = MAGIC_LEN;
        let mut count = 0;
        loop {
            match read_record(&mut r, file_len - offset)? {
                Read1::Record(batch) => {
                    let seq = base + count;
                    if seq >= from {
                        each(seq, offset, &batch);
                    }
                    offset += (HEADER + batch.len()) as u64;
                    count += 1;
                }
                Read1::End => break,
                Read1::Corrupt(why) => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        discarded_bytes = file_len - offset,
                        records_kept = count,
                        "persistent queue: {why}; truncating the torn or corrupt tail"
                    );
                    file.set_len(offset)?;
                    file.sync_data()?;
                    break;
                }
            }
        }
        Ok(Scanned { len: offset, count })
    }

    /// Appends `batch` (durably when the policy is `always`) and, when the sender has caught up
    /// with the disk, hands it straight to the pending queue.
    #[cfg(test)]
    pub fn append(&self, batch: &Batch) -> Result<(), QueueFull> {
        if self.is_closed() {
            return Err(QueueFull::ShuttingDown);
        }
        let n = Wal::record_len(batch);
        self.reserve(n)?;
        let result = self.append_reserved(batch);
        if result.is_err() {
            self.unreserve(n);
        }
        result
    }

    /// Bytes `batch` takes in the log.
    pub fn record_len(batch: &Batch) -> u64 {
        (HEADER + batch.len()) as u64
    }

    /// Takes `n` bytes of the bound for a record about to be appended with
    /// [`Wal::append_reserved`]; refused when full (a lone record larger than the bound still
    /// fits an empty log).
    pub fn reserve(&self, n: u64) -> Result<(), QueueFull> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b == 0 || b + n <= self.opts.max_bytes).then_some(b + n)
            })
            .map(|_| ())
            .map_err(|_| QueueFull::Full)
    }

    /// Gives back a reservation that was not appended.
    pub fn unreserve(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
    }

    /// Appends `batch` in space reserved with [`Wal::reserve`] (refused only when closed or on
    /// an I/O error; the reservation then stays the caller's to give back).
    pub fn append_reserved(&self, batch: &Batch) -> Result<(), QueueFull> {
        let mut guard = lock(&self.state);
        let st = guard.as_mut().ok_or(QueueFull::ShuttingDown)?;
        let rec = encode(batch);
        let rec_len = rec.len() as u64;
        let result = self.write_record(st, &rec);
        if let Err(e) = result {
            tracing::error!(dir = %self.dir.display(), error = %e, "persistent queue: append failed");
            return Err(QueueFull::Io);
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        self.stats
            .queued(batch.signal, batch.items, batch.len() as u64);
        let active_len = st
            .segments
            .get(&st.active_base)
            .copied()
            .unwrap_or(MAGIC_LEN);
        let fits = st.loaded_bytes == 0 || st.loaded_bytes + rec_len <= self.opts.load_budget;
        if st.reader.seq == seq && fits {
            st.reader = Cursor {
                base: st.active_base,
                offset: active_len,
                seq: seq + 1,
            };
            self.load(st, seq, batch.clone());
        }
        Ok(())
    }

    fn write_record(&self, st: &mut State, rec: &[u8]) -> io::Result<()> {
        let len = st
            .segments
            .get(&st.active_base)
            .copied()
            .unwrap_or(MAGIC_LEN);
        let len = if len > MAGIC_LEN && len + rec.len() as u64 > self.opts.segment_bytes {
            self.rotate(st)?;
            MAGIC_LEN
        } else {
            len
        };
        if let Err(e) = st.active.write_all(rec) {
            // Cut a partial record off, or every later append would sit behind garbage.
            let _ = st.active.set_len(len);
            let _ = st.active.seek(SeekFrom::Start(len));
            return Err(e);
        }
        st.segments.insert(st.active_base, len + rec.len() as u64);
        if self.opts.fsync == FsyncPolicy::Always {
            st.active.sync_data()?;
        } else {
            st.dirty = true;
        }
        Ok(())
    }

    fn rotate(&self, st: &mut State) -> io::Result<()> {
        if self.opts.fsync != FsyncPolicy::Never {
            st.active.sync_data()?;
        }
        let base = st.next_seq;
        st.active = create_segment(&self.dir, base, self.opts.fsync)?;
        st.active_base = base;
        st.segments.insert(base, MAGIC_LEN);
        st.dirty = false;
        Ok(())
    }

    fn load(&self, st: &mut State, seq: u64, batch: Batch) {
        let rec = (HEADER + batch.len()) as u64;
        st.loaded_bytes += rec;
        st.outstanding.insert(
            seq,
            Loaded {
                signal: batch.signal,
                items: batch.items,
                payload: batch.len() as u64,
                done: false,
            },
        );
        lock(&self.pending).push(Entry {
            seq,
            batch,
            arrived: Instant::now(),
        });
    }

    /// True when records wait on disk and memory has room to load them.
    pub fn backlogged(&self) -> bool {
        lock(&self.state).as_ref().is_some_and(|st| {
            st.reader.seq < st.next_seq && st.loaded_bytes < self.opts.load_budget / 2
        })
    }

    /// True when every record is loaded (nothing waits on disk only).
    pub fn all_loaded(&self) -> bool {
        lock(&self.state)
            .as_ref()
            .is_none_or(|st| st.reader.seq >= st.next_seq)
    }

    /// Loads records from disk into the pending queue while within the memory budget.
    pub fn refill(&self) -> io::Result<()> {
        let mut guard = lock(&self.state);
        let Some(st) = guard.as_mut() else {
            return Ok(());
        };
        while st.reader.seq < st.next_seq
            && (st.loaded_bytes == 0 || st.loaded_bytes < self.opts.load_budget)
        {
            let seg_len = st.segments.get(&st.reader.base).copied();
            if seg_len.is_none_or(|l| st.reader.offset >= l) {
                let next = st
                    .segments
                    .range(st.reader.base + 1..)
                    .next()
                    .map(|(&b, _)| b);
                let Some(next) = next else { break };
                st.reader = Cursor {
                    base: next,
                    offset: MAGIC_LEN,
                    seq: next,
                };
                st.reader_file = None;
                continue;
            }
            let seg_len = seg_len.unwrap_or(0);
            if st
                .reader_file
                .as_ref()
                .is_none_or(|(b, _)| *b != st.reader.base)
            {
                let mut f = File::open(segment_path(&self.dir, st.reader.base))?;
                f.seek(SeekFrom::Start(st.reader.offset))?;
                st.reader_file = Some((st.reader.base, BufReader::with_capacity(256 << 10, f)));
            }
            let Some((_, r)) = st.reader_file.as_mut() else {
                break;
            };
            match read_record(r, seg_len - st.reader.offset)? {
                Read1::Record(batch) => {
                    let seq = st.reader.seq;
                    st.reader.offset += (HEADER + batch.len()) as u64;
                    st.reader.seq += 1;
                    self.load(st, seq, batch);
                }
                Read1::End | Read1::Corrupt(_) => {
                    // Verified at open and written under the lock since: only outside
                    // interference gets here. Skip the rest of this segment.
                    tracing::error!(dir = %self.dir.display(), segment = st.reader.base, offset = st.reader.offset, "persistent queue: unreadable record; skipping the rest of the segment");
                    st.reader.offset = seg_len;
                }
            }
        }
        Ok(())
    }

    /// Marks records finished (sent, or dropped for good) and advances the ack position over
    /// the contiguous finished prefix, deleting segments that are wholly acknowledged.
    pub fn finish(&self, seqs: &[u64]) -> io::Result<()> {
        let mut guard = lock(&self.state);
        let Some(st) = guard.as_mut() else {
            return Ok(());
        };
        for s in seqs {
            if let Some(o) = st.outstanding.get_mut(s)
                && !o.done
            {
                o.done = true;
                st.loaded_bytes = st.loaded_bytes.saturating_sub(HEADER as u64 + o.payload);
            }
        }
        while let Some(entry) = st.outstanding.first_entry() {
            if !entry.get().done {
                break;
            }
            let o = entry.remove();
            self.unreserve(HEADER as u64 + o.payload);
            self.stats.dequeued(o.signal, o.items, o.payload);
        }
        let ack = st
            .outstanding
            .first_key_value()
            .map_or(st.reader.seq, |(&s, _)| s);
        if ack <= st.acked {
            return Ok(());
        }
        write_ack(&self.dir, ack)?;
        st.acked = ack;
        let done: Vec<u64> = st
            .segments
            .keys()
            .zip(st.segments.keys().skip(1))
            .filter(|&(_, &next)| next <= ack)
            .map(|(&b, _)| b)
            .filter(|&b| b != st.active_base)
            .collect();
        for b in done {
            std::fs::remove_file(segment_path(&self.dir, b))?;
            st.segments.remove(&b);
        }
        Ok(())
    }

    /// fsyncs the active segment if appends happened since the last call (policy `batched`).
    pub fn sync_if_dirty(&self) -> io::Result<()> {
        let file = {
            let mut guard = lock(&self.state);
            let Some(st) = guard.as_mut() else {
                return Ok(());
            };
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            st.active.try_clone()?
        };
        file.sync_data()
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).is_none()
    }

    /// Flushes and releases the directory; unacknowledged records stay for the next open.
    pub fn close(&self) {
        let st = lock(&self.state).take();
        if let Some(st) = st
            && self.opts.fsync != FsyncPolicy::Never
            && let Err(e) = st.active.sync_data()
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "persistent queue: fsync at close failed");
        }
        lock(&self.pending).drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WalOptions {
        WalOptions {
            max_bytes: 1 << 20,
            segment_bytes: 4096,
            fsync: FsyncPolicy::Always,
            load_budget: 1 << 20,
        }
    }

    fn batch(i: u64) -> Batch {
        let signal = Signal::ALL[(i % 3) as usize];
        Batch::new(
            signal,
            Bytes::from(format!("payload-{i:05}-{}", "x".repeat(100))),
            i + 1,
        )
    }

    fn open(dir: &Path, o: WalOptions) -> (Wal, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        (Wal::open(dir, o, stats.clone()).unwrap(), stats)
    }

    /// Everything pending, in sequence order.
    fn drain(w: &Wal) -> Vec<(u64, Batch)> {
        let mut out = Vec::new();
        loop {
            w.refill().unwrap();
            let taken: Vec<_> = {
                let mut p = lock(&w.pending);
                p.drain()
            };
            if taken.is_empty() {
                break;
            }
            out.extend(taken.into_iter().map(|e| (e.seq, e.batch)));
        }
        out.sort_by_key(|(s, _)| *s);
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn append_reopen_replays_everything_unacked() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = open(dir.path(), opts());
        for i in 0..100 {
            w.append(&batch(i)).unwrap();
        }
        assert!(segment_files(dir.path()).len() > 1, "segments rotate");
        let got = drain(&w);
        assert_eq!(got.len(), 100);
        w.close();
        drop(w);

        let (w, stats) = open(dir.path(), opts());
        let got = drain(&w);
        assert_eq!(got.len(), 100);
        for (i, (seq, b)) in got.iter().enumerate() {
            assert_eq!(*seq, i as u64);
            assert_eq!(*b, batch(i as u64));
        }
        let replayed: u64 = stats
            .signals
            .iter()
            .map(|s| s.replayed.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert_eq!(replayed, (1..=100).sum::<u64>());
    }

    #[test]
    fn a_crash_without_close_loses_nothing_under_any_fsync_policy() {
        for fsync in [
            FsyncPolicy::Always,
            FsyncPolicy::Batched,
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut o = opts();
            o.fsync = fsync;
            let (w, _) = open(dir.path(), o);
            for i in 0..30 {
                w.append(&batch(i)).unwrap();
            }
            w.sync_if_dirty().unwrap();
            w.append(&batch(30)).unwrap();
            // Dropped as a killed process leaves it: no close, no final fsync, no ack.
            drop(w);
            let (w, _) = open(dir.path(), o);
            let got = drain(&w);
            assert_eq!(got.len(), 31, "{fsync:?}");
            assert_eq!(got[30].1, batch(30));
        }
    }

    #[test]
    fn ack_persists_and_only_advances_over_a_contiguous_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = open(dir.path(), opts());
        for i in 0..10 {
            w.append(&batch(i)).unwrap();
        }
        drain(&w);
        // 0..3 and 5 finish; 4 is still in flight, so the ack stops at 4.
        w.finish(&[2, 0, 1, 3, 5]).unwrap();
        assert_eq!(read_ack(dir.path()), Some(4));
        w.close();
        drop(w);
        let (w, _) = open(dir.path(), opts());
        let seqs: Vec<u64> = drain(&w).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, (4..10).collect::<Vec<_>>());
        w.finish(&seqs).unwrap();
        assert_eq!(read_ack(dir.path()), Some(10));
        // Appends continue the numbering after a reopen.
        w.append(&batch(10)).unwrap();
        assert_eq!(drain(&w)[0].0, 10);
    }

    #[test]
    fn a_lock_keeps_a_second_opener_out() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = open(dir.path(), opts());
        assert!(Wal::open(dir.path(), opts(), Arc::default()).is_err());
        w.close();
        drop(w);
        assert!(Wal::open(dir.path(), opts(), Arc::default()).is_ok());
    }

    #[test]
    fn torn_tail_is_cut_and_complete_records_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.segment_bytes = 1 << 20; // one segment
        let (w, _) = open(dir.path(), o);
        for i in 0..20 {
            w.append(&batch(i)).unwrap();
        }
        w.close();
        drop(w);
        let seg = segment_files(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        // Cut the last record in half, then append garbage as a crash mid-write might leave.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 50).unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xAB; 333]).unwrap();
        drop(f);

        let (w, _) = open(dir.path(), o);
        let got = drain(&w);
        assert_eq!(got.len(), 19);
        for (i, (_, b)) in got.iter().enumerate() {
            assert_eq!(*b, batch(i as u64));
        }
        // Appending after recovery works and survives another reopen.
        w.append(&batch(19)).unwrap();
        w.close();
        drop(w);
        let (w, _) = open(dir.path(), o);
        let got = drain(&w);
        assert_eq!(got.len(), 20);
        assert_eq!(got[19], (19, batch(19)));
    }

    #[test]
    fn corrupt_record_in_the_middle_keeps_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.segment_bytes = 1 << 20;
        let (w, _) = open(dir.path(), o);
        for i in 0..10 {
            w.append(&batch(i)).unwrap();
        }
        w.close();
        drop(w);
        let seg = segment_files(dir.path()).pop().unwrap();
        let mut raw = std::fs::read(&seg).unwrap();
        let rec = HEADER + batch(0).len();
        raw[8 + 5 * rec + HEADER + 3] ^= 0xFF; // flip a payload byte of record 5
        std::fs::write(&seg, raw).unwrap();
        let (w, _) = open(dir.path(), o);
        assert_eq!(drain(&w).len(), 5);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (w, stats) = open(dir.path(), opts());
        for i in 0..100 {
            w.append(&batch(i)).unwrap();
        }
        let n = segment_files(dir.path()).len();
        assert!(n >= 3, "{n} segments");
        let seqs: Vec<u64> = drain(&w).into_iter().map(|(s, _)| s).collect();
        w.finish(&seqs[..50]).unwrap();
        let mid = segment_files(dir.path()).len();
        assert!(mid < n && mid > 1, "{mid} of {n}");
        w.finish(&seqs[50..]).unwrap();
        assert_eq!(
            segment_files(dir.path()).len(),
            1,
            "only the active segment stays"
        );
        let queued: u64 = stats
            .signals
            .iter()
            .map(|s| s.queued_items.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert_eq!(queued, 0);
        w.close();
        drop(w);
        let (w, _) = open(dir.path(), opts());
        assert!(drain(&w).is_empty());
    }

    #[test]
    fn full_queue_refuses_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        let rec = (HEADER + batch(0).len()) as u64;
        o.max_bytes = rec * 5;
        let (w, _) = open(dir.path(), o);
        for i in 0..5 {
            w.append(&batch(i)).unwrap();
        }
        assert_eq!(w.append(&batch(5)), Err(QueueFull::Full));
        let seqs: Vec<u64> = drain(&w).into_iter().map(|(s, _)| s).collect();
        w.finish(&seqs[..1]).unwrap();
        w.append(&batch(5)).unwrap();
        assert_eq!(w.append(&batch(6)), Err(QueueFull::Full));
        w.close();
        assert_eq!(w.append(&batch(6)), Err(QueueFull::ShuttingDown));
    }

    #[test]
    fn reservations_count_against_the_bound_until_appended_or_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        let rec = Wal::record_len(&batch(0));
        o.max_bytes = rec * 3;
        let (w, _) = open(dir.path(), o);
        w.reserve(rec).unwrap();
        w.reserve(rec).unwrap();
        w.append(&batch(0)).unwrap();
        assert_eq!(w.reserve(rec), Err(QueueFull::Full));
        assert_eq!(w.append(&batch(1)), Err(QueueFull::Full));
        w.unreserve(rec);
        w.append_reserved(&batch(1)).unwrap();
        // The first reservation became record 1; the second was given back.
        let seqs: Vec<u64> = drain(&w).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs.len(), 2);
        w.reserve(rec).unwrap();
        assert_eq!(w.reserve(rec), Err(QueueFull::Full));
        w.finish(&seqs).unwrap();
        w.reserve(rec).unwrap();
        w.reserve(rec).unwrap();
        assert_eq!(w.reserve(rec), Err(QueueFull::Full));
    }

    #[test]
    fn records_beyond_the_memory_budget_wait_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        let rec = (HEADER + batch(0).len()) as u64;
        o.load_budget = rec * 3;
        let (w, _) = open(dir.path(), o);
        for i in 0..10 {
            w.append(&batch(i)).unwrap();
        }
        let first: Vec<u64> = lock(&w.pending)
            .drain()
            .into_iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(first, vec![0, 1, 2]);
        assert!(!w.backlogged(), "nothing more loads until memory frees");
        w.finish(&first).unwrap();
        assert!(w.backlogged());
        w.refill().unwrap();
        let next: Vec<u64> = lock(&w.pending)
            .drain()
            .into_iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(next, vec![3, 4, 5]);
    }
}
