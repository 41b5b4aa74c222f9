//! `GET /api/environments/{env}/logs?n=N&follow=true&process=P`: the tail of the app log (or
//! of process type P's log), and with
//! `follow` the lines written after it, streamed as they come (rotation is followed) until
//! ferry stops; followed logs count against `[server] max_streams`.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::{ApiResult, AppState};

/// What a followed log holds while it streams: its place among the streams, and the
/// shutdown watch that ends it.
type Held = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::watch::Receiver<bool>,
);

#[derive(Deserialize)]
pub(super) struct LogQuery {
    n: Option<usize>,
    follow: Option<bool>,
    /// A process type (`[processes]`): its own log; `web` (the default) is the app log.
    process: Option<String>,
}

/// The last `n` lines of the file at `path`, and the offset where they end.
fn tail(path: &std::path::Path, n: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let window = size.min(4 * 1024 * 1024);
    file.seek(SeekFrom::Start(size - window))?;
    let mut buf = Vec::with_capacity(window as usize);
    file.take(window).read_to_end(&mut buf)?;
    let mut newlines = 0;
    let mut start = 0;
    let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            newlines += 1;
            if newlines == n {
                start = i + 1;
                break;
            }
        }
    }
    if n == 0 {
        start = buf.len();
    }
    Ok((buf[start..].to_vec(), size))
}

pub(super) async fn logs(
    State(app): State<AppState>,
    Path(env): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let path = app.engine.log_path(&env, q.process.as_deref())?;
    let n = q.n.unwrap_or(100).min(100_000);
    let (first, offset) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || tail(&path, n).unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow.unwrap_or(false) {
        return Ok((headers, first).into_response());
    }
    let held = (super::stream::stream_permit(&app)?, app.shutdown.clone());
    let stream = futures_util::stream::unfold(
        (Some(first), path, offset, held),
        |(pending, path, offset, mut held): (Option<Vec<u8>>, PathBuf, u64, Held)| async move {
            if let Some(first) = pending {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(first)),
                    (None, path, offset, held),
                ));
            }
            let mut offset = offset;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = crate::proxy::stopped(&mut held.1) => return None,
                }
                let read = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || -> std::io::Result<(Vec<u8>, u64)> {
                        let mut file = std::fs::File::open(&path)?;
                        let size = file.metadata()?.len();
                        // a smaller file was rotated: start again at its beginning
                        let from = if size < offset { 0 } else { offset };
                        file.seek(SeekFrom::Start(from))?;
                        let mut buf = Vec::new();
                        file.take(1024 * 1024).read_to_end(&mut buf)?;
                        Ok((buf, from))
                    }
                })
                .await;
                if let Ok(Ok((buf, from))) = read {
                    if from < offset {
                        offset = from;
                    }
                    if !buf.is_empty() {
                        offset += buf.len() as u64;
                        return Some((Ok(Bytes::from(buf)), (None, path, offset, held)));
                    }
                }
            }
        },
    );
    Ok((headers, Body::from_stream(stream)).into_response())
}
