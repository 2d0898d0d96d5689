//! The workers' stderr, relayed as events: only the broker writes to its
//! own stderr, which carries the audit log.

use std::os::fd::OwnedFd;

/// The longest worker stderr line logged whole; longer ones are split.
const WORKER_LINE_MAX: usize = 1024;

/// Logs each line the workers write to stderr as a `worker_stderr` event,
/// with control characters and quotes escaped: a worker's words can never
/// pass for an audit record or another event. Ends when every worker has
/// closed the pipe.
pub async fn relay(read_end: OwnedFd) {
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(target: "spacer::event", event = "worker_stderr_lost", error = %e, "cannot read the workers' stderr");
            return;
        }
    };
    let emit = |line: &[u8]| {
        let text = String::from_utf8_lossy(line).escape_debug().to_string();
        tracing::warn!(target: "spacer::event", event = "worker_stderr", line = %text, "a worker wrote to stderr");
    };
    let mut line = Vec::with_capacity(WORKER_LINE_MAX);
    let mut chunk = [0u8; 1024];
    loop {
        if pipe.readable().await.is_err() {
            break;
        }
        let n = match pipe.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                emit(&line);
                line.clear();
                continue;
            }
            if line.len() == WORKER_LINE_MAX {
                emit(&line);
                line.clear();
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
}
