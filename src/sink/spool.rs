//! The disk spool: where records wait while Kafka cannot take them, bounded in
//! bytes, checksummed, fsynced on an interval, replayed oldest first.
//!
//! Layout: a directory of segment files `<seq>.seg`, each a run of frames
//! `[len: u32 BE][crc32: u32 BE][frame]`. Appends go to the newest segment; the
//! replayer reads the oldest sealed segment and deletes it only once every
//! record in it was acknowledged, so a crash mid-replay re-sends (at least once)
//! rather than loses. A torn frame at the end of a segment (crash mid-write) is
//! detected by its length or checksum and dropped, and counted.
//!
//! The spool never grows past `max_bytes`: an append that would is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::record::Encoded;

const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
const FRAME_HEADER: usize = 8;

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
    /// Records in all segment files (recounted on open).
    records: AtomicU64,
}

struct State {
    writer: Option<Writer>,
    next_seq: u64,
}

/// What opening an existing spool found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    pub records: u64,
    pub bytes: u64,
    /// Frames dropped because they were torn or failed their checksum.
    pub corrupt: u64,
}

impl Spool {
    /// Opens (creating) the spool directory and counts what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovered), SpoolError> {
        fs::create_dir_all(dir)?;
        let mut rec = Recovered::default();
        let mut next_seq = 1;
        for (seq, path) in segments(dir)? {
            let (frames, corrupt, good_len) = scan(&path)?;
            if corrupt > 0 {
                // Cut the torn tail so later appends and replays start at a frame boundary.
                OpenOptions::new().write(true).open(&path)?.set_len(good_len)?;
            }
            rec.records += frames.len() as u64;
            rec.corrupt += corrupt;
            rec.bytes += good_len;
            next_seq = next_seq.max(seq + 1);
        }
        let spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State { writer: None, next_seq }),
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
        w.file.write_all(&buf)?;
        w.len += size;
        w.dirty = true;
        self.used.fetch_add(size, Ordering::Relaxed);
        self.records.fetch_add(1, Ordering::Relaxed);
        Ok(())
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

    /// The oldest segment's records, sealing the active segment if it is the only
    /// one (so it can be replayed). `None` when the spool is empty.
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
        drop(st);
        let (frames, _, len) = scan(&path)?;
        let records: Vec<Encoded> = frames.iter().filter_map(|f| decode_frame(f)).collect();
        let undecodable = (frames.len() - records.len()) as u64;
        Ok(Some(Batch { path, bytes: len, frames: frames.len() as u64, records, undecodable }))
    }

    /// Deletes a batch's segment after every record in it was acknowledged.
    pub fn ack(&self, batch: Batch) -> io::Result<()> {
        fs::remove_file(&batch.path)?;
        let _st = self.state.lock().expect("spool lock");
        self.used.fetch_sub(batch.bytes.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        self.records.fetch_sub(batch.frames.min(self.records.load(Ordering::Relaxed)), Ordering::Relaxed);
        Ok(())
    }
}

/// One segment's worth of records to replay.
pub struct Batch {
    path: PathBuf,
    bytes: u64,
    frames: u64,
    pub records: Vec<Encoded>,
    /// Frames whose checksum held but whose content did not decode (counted, not replayed).
    pub undecodable: u64,
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

/// Reads a segment's good frames; returns them, the count of bad frames, and the good length.
fn scan(path: &Path) -> io::Result<(Vec<Vec<u8>>, u64, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut frames = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if data.len() - pos < FRAME_HEADER {
            return Ok((frames, 1, pos as u64));
        }
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let end = pos + FRAME_HEADER + len;
        if end > data.len() || crc32fast::hash(&data[pos + FRAME_HEADER..end]) != crc {
            return Ok((frames, 1, pos as u64));
        }
        frames.push(data[pos + FRAME_HEADER..end].to_vec());
        pos = end;
    }
    Ok((frames, 0, pos as u64))
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
        let batch = spool.oldest().unwrap().unwrap();
        assert_eq!(batch.records, (0..10).map(rec).collect::<Vec<_>>());
        spool.ack(batch).unwrap();
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
        let on_disk: u64 = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert_eq!(on_disk, spool.used_bytes());
    }

    #[test]
    fn torn_tail_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&rec(1)).unwrap();
        spool.append(&rec(2)).unwrap();
        drop(spool);
        let seg = segments(dir.path()).unwrap()[0].1.clone();
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 10).unwrap();
        let (spool, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt), (1, 1));
        assert_eq!(spool.oldest().unwrap().unwrap().records, vec![rec(1)]);
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&rec(1)).unwrap();
        drop(spool);
        let seg = segments(dir.path()).unwrap()[0].1.clone();
        let mut data = fs::read(&seg).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        fs::write(&seg, data).unwrap();
        let (_, found) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((found.records, found.corrupt), (0, 1));
    }
}
