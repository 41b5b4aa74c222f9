//! Where an instance's output goes: the environment's rotated app log ([`LogSink`]), in whole
//! lines with secrets masked, and the last lines kept in memory for failure reports
//! ([`LineTap`]). Output reaches ferry through a named pipe the instance holds open for
//! reading and writing, so it never gets SIGPIPE when ferry is gone.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::{LAST_LINES, LOG_FILES_KEPT, LOG_ROTATE_BYTES};

/// The environment's app log, rotated at [`LOG_ROTATE_BYTES`]; shared by its instances.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<LogFile>>,
    redactor: Option<Arc<crate::sandbox::Redactor>>,
}

struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl LogSink {
    pub fn open(path: PathBuf) -> std::io::Result<LogSink> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogSink {
            inner: Arc::new(Mutex::new(LogFile {
                path,
                file: Some(file),
                size,
            })),
            redactor: None,
        })
    }

    /// Masks known secrets in every line written from now on (writes are whole lines).
    pub fn with_redactor(mut self, redactor: Arc<crate::sandbox::Redactor>) -> LogSink {
        self.redactor = Some(redactor);
        self
    }

    pub fn path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogFile> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes`, rotating first when the file would pass the limit.
    pub fn write(&self, bytes: &[u8]) {
        let bytes = match &self.redactor {
            Some(r) => r.redact_bytes(bytes),
            None => std::borrow::Cow::Borrowed(bytes),
        };
        let bytes = &*bytes;
        let mut log = self.lock();
        if log.size > 0 && log.size + bytes.len() as u64 > LOG_ROTATE_BYTES {
            log.rotate();
        }
        if let Some(file) = log.file.as_mut()
            && file.write_all(bytes).is_ok()
        {
            log.size += bytes.len() as u64;
        }
    }
}

impl LogFile {
    fn rotate(&mut self) {
        self.file = None;
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..LOG_FILES_KEPT).rev() {
            let from = if n == 1 {
                self.path.clone()
            } else {
                numbered(n - 1)
            };
            let _ = std::fs::rename(from, numbered(n));
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }
}

/// Watches an instance's output lines for a pattern once asked to (post-deploy monitoring),
/// and keeps its last [`LAST_LINES`] lines, redacted, for failure reports.
pub(super) struct LineTap {
    pub(super) watch: Mutex<Option<(regex::Regex, Vec<std::time::Instant>)>>,
    /// Raw, as read: masked when asked for ([`super::Instance::last_lines`]), so a flood of output
    /// costs one copy of the last lines of each chunk and nothing more.
    pub(super) last: Mutex<std::collections::VecDeque<Vec<u8>>>,
    /// Set once the output pipe has ended (every line is in `last`), or the pump was detached.
    pub(super) ended: watch::Sender<bool>,
    /// Set to stop reading the pipe (a new `serve` takes the instance over, see
    /// [`super::Instance::detach`]).
    pub(super) detach: watch::Sender<bool>,
    /// The log's: lines are masked as the log masks them.
    redactor: Option<Arc<crate::sandbox::Redactor>>,
    /// Where the output goes (kept to read it again after a detach, see [`super::Instance::reattach`]).
    pub(super) log: LogSink,
}

impl LineTap {
    pub(super) fn new(log: &LogSink) -> LineTap {
        LineTap {
            watch: Mutex::default(),
            last: Mutex::default(),
            ended: watch::channel(false).0,
            detach: watch::channel(false).0,
            redactor: log.redactor.clone(),
            log: log.clone(),
        }
    }

    /// `line` as the log holds it: known secrets masked.
    pub(super) fn redact(&self, line: &[u8]) -> String {
        let text = String::from_utf8_lossy(line);
        match &self.redactor {
            Some(r) => r.redact(&text),
            None => text.into_owned(),
        }
    }
}

impl LineTap {
    fn active(&self) -> bool {
        self.watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Keeps the last [`LAST_LINES`] lines of `chunk` (whole lines, as the pump writes them).
    fn keep(&self, chunk: &[u8]) {
        let mut newest: Vec<&[u8]> = chunk
            .rsplit(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .take(LAST_LINES)
            .collect();
        newest.reverse();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for line in newest {
            if last.len() >= LAST_LINES {
                last.pop_front();
            }
            last.push_back(line.to_vec());
        }
    }

    fn feed(&self, line: &[u8]) {
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pattern, hits)) = watch.as_mut()
            && pattern.is_match(&String::from_utf8_lossy(line))
        {
            // a flood of matches is a breach long before this; keep memory bounded
            if hits.len() >= 100_000 {
                hits.drain(..50_000);
            }
            hits.push(std::time::Instant::now());
        }
    }
}

/// Makes a fresh named pipe at `path` and opens it for reading and writing: the instance
/// gets this end, so a reader always exists and its writes never fail with EPIPE.
pub(super) fn make_pipe(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(
        path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(std::io::Error::from)?;
    OpenOptions::new().read(true).write(true).open(path)
}

/// Opens ferry's reading end of an instance's pipe (it sees the end once every writer is gone).
pub(super) fn open_pipe(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)
}

/// The longest partial line kept while waiting for its end.
const MAX_PENDING_LINE: usize = 64 * 1024;
/// How long a partial line waits for its end before it is written as it is.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(200);

/// Copies an instance's output to the log in whole lines (so a secret is never split
/// between two writes and escapes the redactor), feeding each line to the monitor's tap.
/// A partial line is written once no more comes for [`PARTIAL_LINE_WAIT`], or at the end.
/// Detaching ([`super::Instance::detach`]) ends it between two reads, with what was read written.
pub(super) async fn pump(mut from: impl AsyncRead + Unpin, log: LogSink, lines: Arc<LineTap>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut detach = lines.detach.subscribe();
    loop {
        let read = tokio::select! {
            biased;
            _ = detach.wait_for(|d| *d) => break,
            read = async {
                if pending.is_empty() {
                    Some(from.read(&mut buf).await)
                } else {
                    tokio::time::timeout(PARTIAL_LINE_WAIT, from.read(&mut buf)).await.ok()
                }
            } => read,
        };
        let read = match read {
            Some(read) => read,
            None => {
                // a prompt or a line still being written: write what there is
                flush(&log, &lines, std::mem::take(&mut pending)).await;
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let whole = match pending.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None if pending.len() > MAX_PENDING_LINE => pending.len(),
            None => continue,
        };
        let rest = pending.split_off(whole);
        flush(&log, &lines, std::mem::replace(&mut pending, rest)).await;
    }
    if !pending.is_empty() {
        flush(&log, &lines, pending).await;
    }
    lines.ended.send_replace(true);
}

async fn flush(log: &LogSink, lines: &LineTap, chunk: Vec<u8>) {
    if lines.active() {
        for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            lines.feed(line);
        }
    }
    lines.keep(&chunk);
    let log = log.clone();
    // file writes block; keep them off the async workers
    let _ = tokio::task::spawn_blocking(move || log.write(&chunk)).await;
}
