//! The disk spool: where records wait while Kafka cannot take them, bounded in
//! bytes, checksummed, fsynced on an interval, replayed oldest first.
//!
//! Layout: a directory of segment files `<seq>.seg`, each a run of frames
//! `[len: u32 BE][crc32: u32 BE][frame]`. Appends go to the newest segment; the
//! replayer reads the oldest sealed segment, marks each record Kafka acknowledged
//! (so a retry resends only the others), and deletes the segment once every record
//! in it was delivered. A crash mid-replay forgets those marks and re-sends the
//! segment's delivered records once: at least once, never lost.
//!
//! A bad frame anywhere in a segment (a crash or a full disk mid-write, a flipped
//! bit) is skipped: the reader resynchronises on the next frame whose length and
//! checksum hold, so every later record is still replayed. The skipped bytes are
//! reported with the segment, to be counted when it is deleted.
//!
//! The spool never grows past `max_bytes`: an append that would is refused. `used`
//! is always the bytes in the segment files, torn or not.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::record::Encoded;

/// A segment is sealed (and replayed as one batch) past this size.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
const FRAME_HEADER: usize = 8;
/// The shortest frame [`encode_frame`] writes (three empty strings, no header, an
/// empty payload). Shorter lengths are never a frame; this keeps a zero-filled
/// region (`len 0`, `crc32("") = 0`) from reading as a run of empty frames.
const MIN_FRAME: usize = 4 * 3 + 4 + 4;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({used} of {max} bytes)")]
    Full { used: u64, max: u64 },
    #[error("spool i/o: {0}")]
    Io(#[from] io::Error),
}

struct Writer {
    seq: u64,
    file: File,
    len: u64,
    dirty: bool,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Bytes in all segment files. Written under the lock, read without it (the async
    /// runtime reads it and must never wait behind an fsync).
    used: AtomicU64,
    /// Records in all segment files not yet delivered (recounted on open).
    records: AtomicU64,
}

struct State {
    writer: Option<Writer>,
    next_seq: u64,
    /// The segment being replayed, and the offsets of its frames already delivered
    /// (or undecodable): a retry skips them. In memory only.
    progress: Option<(u64, HashSet<u64>)>,
}

/// What opening an existing spool found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    pub records: u64,
    pub bytes: u64,
    /// Bad regions (torn or failed checksum) skipped over; each held at least one record.
    pub corrupt: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
}

impl Spool {
    /// Opens (creating) the spool directory and counts what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovered), SpoolError> {
        fs::create_dir_all(dir)?;
        let mut rec = Recovered::default();
        let mut next_seq = 1;
        for (seq, path) in segments(dir)? {
            let scan = scan(&read(&path)?);
            rec.records += scan.frames.len() as u64;
            rec.corrupt += scan.bad_regions;
            rec.corrupt_bytes += scan.skipped_bytes;
            rec.bytes += scan.len;
            next_seq = next_seq.max(seq + 1);
        }
        let spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State { writer: None, next_seq, progress: None }),
            used: AtomicU64::new(rec.bytes),
            records: AtomicU64::new(rec.records),
        };
        Ok((spool, rec))
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Appends one record (disk; blocking). Refused when it would pass `max_bytes`.
    pub fn append(&self, record: &Encoded) -> Result<(), SpoolError> {
        let frame = encode_frame(record);
        let size = (frame.len() + FRAME_HEADER) as u64;
        let mut st = self.state.lock().expect("spool lock");
        let used = self.used.load(Ordering::Relaxed);
        if used + size > self.max_bytes {
            return Err(SpoolError::Full { used, max: self.max_bytes });
        }
        if st.writer.as_ref().is_none_or(|w| w.len >= SEGMENT_BYTES) {
            self.roll(&mut st)?;
        }
        let w = st.writer.as_mut().expect("rolled above");
        let mut buf = Vec::with_capacity(frame.len() + FRAME_HEADER);
        buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        buf.extend_from_slice(&crc32fast::hash(&frame).to_be_bytes());
        buf.extend_from_slice(&frame);
        if let Err(e) = w.file.write_all(&buf) {
            self.discard_torn_write(&mut st);
            return Err(e.into());
        }
        w.len += size;
        w.dirty = true;
        self.used.fetch_add(size, Ordering::Relaxed);
        self.records.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A write failed part-way (a full disk): cut the partial frame off so the next
    /// append starts at a frame boundary. If even that fails, seal the segment (the
    /// reader skips the torn bytes) and count them in `used`, which stays the bytes on disk.
    fn discard_torn_write(&self, st: &mut State) {
        let Some(w) = st.writer.as_mut() else { return };
        if w.file.set_len(w.len).is_ok() {
            return;
        }
        let on_disk = w.file.metadata().map_or(w.len, |m| m.len());
        self.used.fetch_add(on_disk.saturating_sub(w.len), Ordering::Relaxed);
        st.writer = None;
    }

    fn roll(&self, st: &mut State) -> io::Result<()> {
        if let Some(mut w) = st.writer.take() {
            w.file.flush()?;
            w.file.sync_data()?;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let file = OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{seq:016}.seg")))?;
        st.writer = Some(Writer { seq, file, len: 0, dirty: false });
        Ok(())
    }

    /// fsyncs the segment being written, if anything was appended since the last sync.
    pub fn sync(&self) -> io::Result<()> {
        // fsync a second handle outside the lock, so appends do not wait behind it.
        let file = {
            let mut st = self.state.lock().expect("spool lock");
            match st.writer.as_mut().filter(|w| w.dirty) {
                Some(w) => {
                    w.dirty = false;
                    w.file.try_clone()?
                }
                None => return Ok(()),
            }
        };
        file.sync_data()
    }

    /// The oldest segment's records not yet delivered, sealing the active segment if
    /// it is the only one (so it can be replayed). `None` when the spool is empty.
    pub fn oldest(&self) -> Result<Option<Batch>, SpoolError> {
        let mut st = self.state.lock().expect("spool lock");
        let active = st.writer.as_ref().map(|w| w.seq);
        let segs = segments(&self.dir)?;
        let Some((seq, path)) = segs.into_iter().next() else {
            return Ok(None);
        };
        if Some(seq) == active {
            if st.writer.as_ref().is_some_and(|w| w.len == 0) {
                return Ok(None);
            }
            if let Some(w) = st.writer.take() {
                w.file.sync_data()?;
            }
        }
        // A sealed segment never changes, and only the replayer (one task) removes one:
        // read it without holding up appends.
        drop(st);
        let scan = scan(&read(&path)?);
        let mut st = self.state.lock().expect("spool lock");
        if st.progress.as_ref().is_none_or(|(s, _)| *s != seq) {
            st.progress = Some((seq, HashSet::new()));
        }
        let (_, done) = st.progress.as_mut().expect("set above");
        let mut batch = Batch {
            seq,
            path,
            bytes: scan.len,
            frames: scan.frames.len() as u64,
            records: Vec::new(),
            offsets: Vec::new(),
            undecodable: 0,
            corrupt_regions: scan.bad_regions,
            corrupt_bytes: scan.skipped_bytes,
        };
        for (offset, frame) in scan.frames {
            if done.contains(&offset) {
                continue;
            }
            match decode_frame(&frame) {
                Some(r) => {
                    batch.records.push(r);
                    batch.offsets.push(offset);
                }
                None => {
                    // Reported once, in this batch; never replayed.
                    done.insert(offset);
                    batch.undecodable += 1;
                    uncount(&self.records, 1);
                }
            }
        }
        Ok(Some(batch))
    }

    /// Marks `batch.records[i]` for each `i` in `delivered` as delivered: a later
    /// [`Spool::oldest`] leaves them out, and they no longer count in [`Spool::records`].
    pub fn mark_delivered(&self, batch: &Batch, delivered: impl IntoIterator<Item = usize>) {
        let mut st = self.state.lock().expect("spool lock");
        let Some((_, done)) = st.progress.as_mut().filter(|(s, _)| *s == batch.seq) else { return };
        for i in delivered {
            if let Some(&offset) = batch.offsets.get(i) {
                if done.insert(offset) {
                    uncount(&self.records, 1);
                }
            }
        }
    }

    /// Deletes a batch's segment once every record in it was delivered.
    pub fn remove(&self, batch: Batch) -> io::Result<()> {
        let mut st = self.state.lock().expect("spool lock");
        fs::remove_file(&batch.path)?;
        let done = match st.progress.take() {
            Some((seq, done)) if seq == batch.seq => done.len() as u64,
            other => {
                st.progress = other;
                0
            }
        };
        let left = batch.frames.saturating_sub(done);
        uncount(&self.used, batch.bytes);
        uncount(&self.records, left);
        Ok(())
    }
}

/// The oldest segment's records still to deliver.
pub struct Batch {
    seq: u64,
    path: PathBuf,
    /// The segment file's size.
    bytes: u64,
    /// Every good frame in the segment, delivered or not.
    frames: u64,
    pub records: Vec<Encoded>,
    /// Offset in the segment of each of `records`.
    offsets: Vec<u64>,
    /// Frames whose checksum held but whose content did not decode (counted, not replayed).
    pub undecodable: u64,
    /// Bad regions skipped in the segment; lost with it when it is deleted.
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
}

/// Subtracts, stopping at 0 (a count that went wrong must not wrap to 2^64).
fn uncount(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
}

fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            let seq = p.file_name()?.to_str()?.strip_suffix(".seg")?.parse().ok()?;
            Some((seq, p))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    Ok(data)
}

/// What a segment holds.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// Good frames, with their offsets.
    frames: Vec<(u64, Vec<u8>)>,
    /// Runs of bytes that are not a good frame.
    bad_regions: u64,
    skipped_bytes: u64,
    /// The segment's length.
    len: u64,
}

/// Reads a segment's frames, skipping over any bad region: after a bad frame, the
/// next good one is the first offset whose length fits and whose checksum holds.
fn scan(data: &[u8]) -> Scan {
    let mut out = Scan { len: data.len() as u64, ..Scan::default() };
    let mut pos = 0usize;
    let mut in_bad = false;
    while pos < data.len() {
        if let Some(end) = frame_at(data, pos) {
            out.frames.push((pos as u64, data[pos + FRAME_HEADER..end].to_vec()));
            pos = end;
            in_bad = false;
            continue;
        }
        if !in_bad {
            out.bad_regions += 1;
            in_bad = true;
        }
        out.skipped_bytes += 1;
        pos += 1;
    }
    out
}

/// The end of the good frame starting at `pos`, if one does.
fn frame_at(data: &[u8], pos: usize) -> Option<usize> {
    let header = data.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
    if len < MIN_FRAME {
        return None;
    }
    let body = data.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len)?;
    (crc32fast::hash(body) == crc).then_some(pos + FRAME_HEADER + len)
}

fn put(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
    buf.extend_from_slice(b);
}

fn encode_frame(r: &Encoded) -> Vec<u8> {
    let mut buf = Vec::with_capacity(r.payload.len() + 256);
    put(&mut buf, r.pair_id.as_bytes());
    put(&mut buf, r.key.as_bytes());
    put(&mut buf, r.slice.as_bytes());
    buf.extend_from_slice(&(r.headers.len() as u32).to_be_bytes());
    for (k, v) in &r.headers {
        put(&mut buf, k.as_bytes());
        put(&mut buf, v.as_bytes());
    }
    put(&mut buf, &r.payload);
    buf
}

/// Header names a frame may carry; frames store them by name and get the static back.
const HEADER_NAMES: [&str; 5] =
    ["content-type", "untaken-schema", "untaken-schema-version", "untaken-slice", "untaken-route-taken"];

fn decode_frame(mut b: &[u8]) -> Option<Encoded> {
    fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let v = b.get(4..4 + len)?;
        *b = &b[4 + len..];
        Some(v)
    }
    let s = |v: &[u8]| String::from_utf8(v.to_vec()).ok();
    let pair_id = s(take(&mut b)?)?;
    let key = s(take(&mut b)?)?;
    let slice = s(take(&mut b)?)?;
    let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    b = &b[4..];
    let mut headers = Vec::new();
    for _ in 0..n {
        let k = s(take(&mut b)?)?;
        let v = s(take(&mut b)?)?;
        let name = HEADER_NAMES.iter().find(|h| **h == k)?;
        headers.push((*name, v));
    }
    let payload = take(&mut b)?.to_vec();
    Some(Encoded { pair_id, key, headers, payload, slice })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Encoded {
        Encoded {
            pair_id: format!("p{i}"),
            key: format!("r{i}"),
            headers: vec![("content-type", "application/json".into()), ("untaken-slice", "s".into())],
            payload: vec![b'x'; 100 + i],
            slice: "s".into(),
        }
    }

    /// Delivers every record of the oldest segment and deletes it.
    fn replay_all(spool: &Spool) -> Vec<Encoded> {
        let batch = spool.oldest().unwrap().expect("a segment to replay");
        let records = batch.records.clone();
        spool.mark_delivered(&batch, 0..records.len());
        spool.remove(batch).unwrap();
        records
    }

    fn on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
    }

    /// A spool of `n` records in one segment; returns it closed, with each frame's offset.
    fn written(dir: &Path, n: usize) -> (PathBuf, Vec<u64>) {
        let (spool, _) = Spool::open(dir, 1 << 20).unwrap();
        let mut offsets = Vec::new();
        let mut at = 0;
        for i in 0..n {
            offsets.push(at);
            at += (FRAME_HEADER + encode_frame(&rec(i)).len()) as u64;
            spool.append(&rec(i)).unwrap();
        }
        drop(spool);
        offsets.push(at);
        (segments(dir).unwrap()[0].1.clone(), offsets)
    }

    #[test]
    fn replays_oldest_first_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10 {
            spool.append(&rec(i)).unwrap();
        }
        spool.sync().unwrap();
        drop(spool);
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt), (10, 0));
        assert_eq!(replay_all(&spool), (0..10).map(rec).collect::<Vec<_>>());
        assert!(spool.oldest().unwrap().is_none());
        assert_eq!((spool.used_bytes(), spool.records()), (0, 0));
    }

    #[test]
    fn never_grows_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1000).unwrap();
        let mut ok = 0;
        for i in 0..100 {
            match spool.append(&rec(i)) {
                Ok(()) => ok += 1,
                Err(SpoolError::Full { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(ok > 0 && ok < 10, "{ok}");
        assert!(spool.used_bytes() <= 1000);
        assert_eq!(on_disk(dir.path()), spool.used_bytes());
    }

    #[test]
    fn torn_tail_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = written(dir.path(), 2);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 10).unwrap();
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt), (1, 1));
        assert_eq!(spool.used_bytes(), len - 10, "used is the bytes on disk, torn ones included");
        let batch = spool.oldest().unwrap().unwrap();
        assert_eq!(batch.records, vec![rec(0)]);
        assert_eq!(batch.corrupt_bytes, fs::metadata(&seg).unwrap().len() - (FRAME_HEADER + encode_frame(&rec(0)).len()) as u64);
    }

    #[test]
    fn a_torn_frame_mid_segment_loses_only_itself() {
        // A full disk mid-write, then space freed: half a frame, then more good frames.
        let dir = tempfile::tempdir().unwrap();
        let (seg, at) = written(dir.path(), 10);
        let data = fs::read(&seg).unwrap();
        let half = ((at[5] - at[4]) / 2) as usize;
        let torn: Vec<u8> = [&data[..at[4] as usize], &data[at[4] as usize..at[4] as usize + half], &data[at[5] as usize..]].concat();
        fs::write(&seg, &torn).unwrap();

        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt, found.corrupt_bytes), (9, 1, half as u64));
        assert_eq!(spool.used_bytes(), torn.len() as u64);
        let batch = spool.oldest().unwrap().unwrap();
        assert_eq!((batch.corrupt_regions, batch.corrupt_bytes), (1, half as u64));
        let want: Vec<Encoded> = (0..10).filter(|i| *i != 4).map(rec).collect();
        assert_eq!(batch.records, want, "every record after the torn one is recovered");
        spool.mark_delivered(&batch, 0..9);
        spool.remove(batch).unwrap();
        assert_eq!((spool.used_bytes(), spool.records(), on_disk(dir.path())), (0, 0, 0));
    }

    #[test]
    fn a_flipped_bit_mid_segment_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, at) = written(dir.path(), 10);
        let mut data = fs::read(&seg).unwrap();
        data[at[3] as usize + FRAME_HEADER + 30] ^= 0x10;
        fs::write(&seg, &data).unwrap();
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt, found.corrupt_bytes), (9, 1, at[4] - at[3]));
        let want: Vec<Encoded> = (0..10).filter(|i| *i != 3).map(rec).collect();
        assert_eq!(replay_all(&spool), want);
        assert_eq!((spool.used_bytes(), spool.records()), (0, 0));
    }

    #[test]
    fn a_zero_filled_region_is_not_read_as_frames() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, at) = written(dir.path(), 4);
        let data = fs::read(&seg).unwrap();
        let holed: Vec<u8> = [&data[..at[2] as usize], &[0u8; 4096][..], &data[at[2] as usize..]].concat();
        fs::write(&seg, &holed).unwrap();
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt, found.corrupt_bytes), (4, 1, 4096));
        assert_eq!(replay_all(&spool), (0..4).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn a_retry_resends_only_what_was_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..6 {
            spool.append(&rec(i)).unwrap();
        }
        let first = spool.oldest().unwrap().unwrap();
        assert_eq!(first.records.len(), 6);
        // Kafka took 0, 2 and 5 before it failed again.
        spool.mark_delivered(&first, [0, 2, 5]);
        assert_eq!(spool.records(), 3);
        drop(first);
        let second = spool.oldest().unwrap().unwrap();
        assert_eq!(second.records, vec![rec(1), rec(3), rec(4)]);
        spool.mark_delivered(&second, [1]);
        let third = spool.oldest().unwrap().unwrap();
        assert_eq!(third.records, vec![rec(1), rec(4)]);
        spool.mark_delivered(&third, 0..2);
        spool.remove(third).unwrap();
        assert_eq!((spool.records(), spool.used_bytes()), (0, 0));
        // Appends after a replay start a new segment and are replayed in turn.
        spool.append(&rec(9)).unwrap();
        assert_eq!(replay_all(&spool), vec![rec(9)]);
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = written(dir.path(), 1);
        let mut data = fs::read(&seg).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        fs::write(&seg, data).unwrap();
        let (_, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt), (0, 1));
    }

    mod model {
        //! Random sequences of append, sync, partial replay, crash and torn-write crash,
        //! checked against a trivial in-memory model of what must come back.
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Append(usize),
            Sync,
            /// Replay the oldest segment; Kafka takes the records whose bit is set.
            Replay(Vec<bool>),
            Crash,
            /// A crash mid-append: these bytes of a frame are left at the end of the newest segment.
            TornCrash(Vec<u8>),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0usize..400).prop_map(Op::Append),
                1 => Just(Op::Sync),
                3 => proptest::collection::vec(any::<bool>(), 1..8).prop_map(Op::Replay),
                1 => Just(Op::Crash),
                1 => proptest::collection::vec(any::<u8>(), 1..60).prop_map(Op::TornCrash),
            ]
        }

        fn record(id: u64, size: usize) -> Encoded {
            Encoded {
                pair_id: format!("p{id}"),
                key: format!("r{id}"),
                headers: vec![("untaken-slice", "s".into())],
                payload: vec![(id % 251) as u8; size],
                slice: "s".into(),
            }
        }

        /// The model: segments oldest first, each its records in order with a
        /// delivered mark; the newest may still be written to.
        #[derive(Default)]
        struct Model {
            segments: Vec<Vec<(u64, bool)>>,
            active: bool,
        }

        impl Model {
            fn undelivered(&self) -> u64 {
                self.segments.iter().flatten().filter(|(_, d)| !d).count() as u64
            }
            fn crash(&mut self) {
                self.active = false;
                for (_, d) in self.segments.iter_mut().flatten() {
                    *d = false;
                }
            }
        }

        fn check(spool: &Spool, model: &Model, dir: &Path) {
            assert_eq!(spool.records(), model.undelivered(), "records not yet delivered");
            assert_eq!(spool.used_bytes(), on_disk(dir), "used is exactly the bytes on disk");
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn spool_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
                let dir = tempfile::tempdir().unwrap();
                let (mut spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
                let mut model = Model::default();
                let mut next_id = 0u64;
                // Each record's size, so what comes back is compared whole, not by id alone.
                let mut sizes: Vec<usize> = Vec::new();
                let same = |got: &Encoded, sizes: &[usize]| {
                    let id: u64 = got.pair_id[1..].parse().unwrap();
                    *got == record(id, sizes[id as usize])
                };
                for op in ops {
                    match op {
                        Op::Append(size) => {
                            spool.append(&record(next_id, size)).unwrap();
                            sizes.push(size);
                            if !model.active {
                                model.segments.push(Vec::new());
                                model.active = true;
                            }
                            model.segments.last_mut().unwrap().push((next_id, false));
                            next_id += 1;
                        }
                        Op::Sync => spool.sync().unwrap(),
                        Op::Replay(mask) => {
                            let batch = spool.oldest().unwrap();
                            let Some(batch) = batch else {
                                prop_assert!(model.segments.is_empty());
                                continue;
                            };
                            if model.segments.len() == 1 {
                                model.active = false; // oldest() sealed it
                            }
                            let want: Vec<String> =
                                model.segments[0].iter().filter(|(_, d)| !d).map(|(id, _)| format!("p{id}")).collect();
                            let got: Vec<String> = batch.records.iter().map(|r| r.pair_id.clone()).collect();
                            prop_assert_eq!(&got, &want, "oldest segment's undelivered records, in order");
                            prop_assert!(batch.records.iter().all(|r| same(r, &sizes)), "records come back byte for byte");
                            let took: Vec<usize> = (0..got.len()).filter(|i| mask[i % mask.len()]).collect();
                            spool.mark_delivered(&batch, took.iter().copied());
                            for i in &took {
                                let id: u64 = got[*i][1..].parse().unwrap();
                                model.segments[0].iter_mut().find(|(x, _)| *x == id).unwrap().1 = true;
                            }
                            if took.len() == got.len() {
                                spool.remove(batch).unwrap();
                                model.segments.remove(0);
                            }
                        }
                        Op::Crash | Op::TornCrash(_) => {
                            drop(spool);
                            if let (Op::TornCrash(bytes), Some((_, newest))) = (&op, segments(dir.path()).unwrap().pop()) {
                                OpenOptions::new().append(true).open(newest).unwrap().write_all(bytes).unwrap();
                            }
                            model.crash();
                            let (reopened, found) = Spool::open(dir.path(), 1 << 20).unwrap();
                            prop_assert_eq!(found.records, model.undelivered(), "every record not removed comes back");
                            spool = reopened;
                        }
                    }
                    check(&spool, &model, dir.path());
                }
                // Everything left replays, oldest first, and the spool ends empty.
                while let Some(batch) = spool.oldest().unwrap() {
                    let want: Vec<String> =
                        model.segments.remove(0).into_iter().filter(|(_, d)| !d).map(|(id, _)| format!("p{id}")).collect();
                    let got: Vec<String> = batch.records.iter().map(|r| r.pair_id.clone()).collect();
                    prop_assert_eq!(got, want);
                    prop_assert!(batch.records.iter().all(|r| same(r, &sizes)), "records come back byte for byte");
                    spool.mark_delivered(&batch, 0..batch.records.len());
                    spool.remove(batch).unwrap();
                }
                prop_assert!(model.segments.is_empty());
                prop_assert_eq!((spool.records(), spool.used_bytes(), on_disk(dir.path())), (0, 0, 0));
            }
        }
    }
}
