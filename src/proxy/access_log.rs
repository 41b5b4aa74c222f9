//! The access log of an environment's proxy (`access_log = true`): a JSON line per request
//! in `logs/access.log`, rotated as the app log is. Lines are gathered in memory and written
//! every [`FLUSH_EVERY`] (or sooner when [`FLUSH_AT`] bytes wait), so a busy proxy does not
//! write the file once per request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::LogSink;

const FLUSH_EVERY: Duration = Duration::from_millis(250);
const FLUSH_AT: usize = 64 << 10;

/// One request as the log records it.
pub struct Entry<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub request_id: Option<&'a str>,
    pub client: SocketAddr,
}

#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

struct Inner {
    sink: LogSink,
    pending: Mutex<Vec<u8>>,
    flusher: AtomicBool,
}

impl AccessLog {
    /// Opens (creating, private to ferry) `path`.
    pub fn open(path: PathBuf) -> std::io::Result<AccessLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
        }
        Ok(AccessLog {
            inner: Arc::new(Inner {
                sink: LogSink::open(path)?,
                pending: Mutex::default(),
                flusher: AtomicBool::new(false),
            }),
        })
    }

    pub fn record(&self, e: &Entry<'_>) {
        let line = serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "method": String::from_utf8_lossy(e.method),
            "path": String::from_utf8_lossy(e.target),
            "status": e.status,
            "bytes": e.bytes,
            "duration_ms": (e.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            "upstream": e.upstream.map(|a| a.to_string()),
            "request_id": e.request_id,
            "client": e.client.ip().to_canonical().to_string(),
        });
        let full = {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            let _ = serde_json::to_writer(&mut *pending, &line);
            pending.push(b'\n');
            pending.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
        // a load first: the swap (a write every request would make) only until it is started
        if !self.inner.flusher.load(Ordering::Relaxed)
            && !self.inner.flusher.swap(true, Ordering::SeqCst)
        {
            let log = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FLUSH_EVERY).await;
                    let Some(inner) = log.upgrade() else { return };
                    AccessLog { inner }.flush();
                }
            });
        }
    }

    /// Writes what is gathered.
    pub fn flush(&self) {
        let lines =
            std::mem::take(&mut *self.inner.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !lines.is_empty() {
            self.inner.sink.write(&lines);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !lines.is_empty() {
            self.sink.write(&lines);
        }
    }
}
