//! The test process's log, captured: the global `tracing` subscriber (installed once,
//! on first use) writes every event, the app's and librdkafka's, as text into a buffer
//! a test reads, so a test can assert what an operator's log would show, or never show.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// The captured log of this test binary (every test in it logs to the same buffer).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything logged since the capture was installed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once) and returns its buffer. untaken and
/// librdkafka log at debug, everything else at info (as an operator raising the level
/// to debug would see it). Panics if another global subscriber was set first.
pub fn capture() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info,untaken=debug,librdkafka=debug"))
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .try_init()
                .expect("no other global tracing subscriber in this test binary");
            captured
        })
        .clone()
}
