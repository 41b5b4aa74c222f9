//! Sending a release to a host: the manifest line and a tar stream of the release (only
//! the contents the host lacks) on the stdin of the command that runs `ferry agent --dir D
//! receive` there, streamed from a blocking thread, never all in memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::client::{AgentError, ShipReport, keep_lines, stderr_tail};
use super::files::{EntryKind, Tree, path_text};
use super::protocol::{Answer, ErrorKind, ManifestEntry, Received};

/// Counts what passes through.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs `cmd` with the manifest line then a tar stream of the tree (only the files whose
/// content is `lacking`, when the host said) on its stdin; reads its answer line.
pub(super) async fn send_tree(
    mut cmd: Command,
    host: &str,
    dir: &Path,
    tree: Arc<Tree>,
    lacking: Option<HashSet<String>>,
) -> Result<ShipReport, AgentError> {
    let lost = |detail: String| AgentError::Lost {
        host: host.to_string(),
        detail,
    };
    let (reader, writer) = std::io::pipe().map_err(|e| lost(format!("cannot make a pipe: {e}")))?;
    cmd.stdin(Stdio::from(reader))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // the child has the read end now; ours must go, or the child never sees the end
    drop(cmd);
    let mut child = spawned.map_err(|e| lost(format!("cannot run the receive command: {e}")))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_lines = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_done = tokio::spawn(keep_lines(stderr, stderr_lines.clone()));
    let dir = dir.to_path_buf();
    let writing = tokio::task::spawn_blocking(move || write_archive(writer, &dir, &tree, lacking));
    let mut out = Vec::new();
    let read = (&mut stdout).take(1 << 20).read_to_end(&mut out).await;
    let written = writing
        .await
        .map_err(|e| lost(format!("writing the archive failed: {e}")))?;
    let status = child.wait().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), stderr_done).await;
    let text = String::from_utf8_lossy(&out);
    let answer = text
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Answer>(line).ok());
    match answer {
        Some(Answer { error: Some(e), .. }) => Err(AgentError::Remote {
            host: host.to_string(),
            kind: e.kind,
            message: e.message,
            lines: e.lines,
        }),
        Some(Answer { ok: Some(ok), .. }) => {
            let (files_sent, bytes_sent) = written.map_err(|e| {
                lost(format!(
                    "sending the release failed: {e}{}",
                    stderr_tail(&stderr_lines)
                ))
            })?;
            let _: Received = serde_json::from_value(ok).map_err(|e| AgentError::Remote {
                host: host.to_string(),
                kind: ErrorKind::Internal,
                message: format!("the receive's answer is not understood: {e}"),
                lines: Vec::new(),
            })?;
            Ok(ShipReport {
                present: false,
                files_sent,
                bytes_sent,
            })
        }
        _ => {
            let why = match (read, status, written) {
                (_, _, Err(e)) => format!("sending the release failed: {e}"),
                (Err(e), _, _) => format!("reading the receive's answer failed: {e}"),
                (_, Ok(status), _) => {
                    format!("the receive command ended ({status}) without an answer")
                }
                (_, Err(e), _) => format!("the receive command was lost: {e}"),
            };
            Err(lost(format!("{why}{}", stderr_tail(&stderr_lines))))
        }
    }
}

/// Writes the manifest line then the archive to `to`: every dir and link, and each file
/// whose content is lacking (once per content), or every file. Files and bytes written.
fn write_archive(
    to: std::io::PipeWriter,
    dir: &Path,
    tree: &Tree,
    lacking: Option<HashSet<String>>,
) -> std::io::Result<(u64, u64)> {
    let mut out = Counting {
        inner: std::io::BufWriter::with_capacity(64 * 1024, to),
        bytes: 0,
    };
    serde_json::to_writer(&mut out, &tree.manifest)?;
    out.write_all(b"\n")?;
    let by_path: HashMap<&str, &ManifestEntry> =
        tree.manifest.iter().map(|m| (m.path.as_str(), m)).collect();
    let mut sent_contents = HashSet::new();
    let mut files = 0;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    for (path, kind) in &tree.entries {
        if *kind == EntryKind::File {
            let entry = by_path
                .get(path_text(path)?.as_str())
                .copied()
                .ok_or_else(|| std::io::Error::other("a file missing from the manifest"))?;
            let wanted = match &lacking {
                None => true,
                Some(lacking) => lacking.contains(&entry.sha256),
            };
            if !wanted || !sent_contents.insert(entry.sha256.clone()) {
                continue;
            }
            files += 1;
        }
        builder.append_path_with_name(dir.join(path), path)?;
    }
    let mut out = builder.into_inner()?;
    out.flush()?;
    Ok((files, out.bytes))
}
