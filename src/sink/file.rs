//! JSON-lines file sink: the embedded default when no Kafka brokers are configured.
//! One record per line, appended; `flush_blocking` fsyncs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::record::Encoded;

pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl FileSink {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { path: path.to_path_buf(), file: Arc::new(Mutex::new(file)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (a single write, so lines never interleave).
    pub async fn append(&self, record: &Encoded) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(record.payload.len() + 1);
        line.extend_from_slice(&record.payload);
        line.push(b'\n');
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.lock().expect("file sink lock").write_all(&line))
            .await
            .map_err(std::io::Error::other)?
    }

}

impl super::Sink for FileSink {
    async fn send(&self, record: &Encoded) -> Result<(), super::SinkError> {
        Ok(self.append(record).await?)
    }

    /// Fsyncs the file; the timeout does not apply (a local disk).
    fn flush_blocking(&self, _timeout: std::time::Duration) -> Result<(), super::SinkError> {
        Ok(self.file.lock().expect("file sink lock").sync_data()?)
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}
