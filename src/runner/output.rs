//! Reading a task's output: every byte is read so the child never blocks on a full pipe,
//! but only the first `maxOutputBytes` are kept and the rest is counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// Captured output of one stream.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Bytes read past the limit and dropped.
    pub dropped: u64,
}

impl Captured {
    pub fn from_message(message: String) -> Captured {
        Captured {
            bytes: message.into_bytes(),
            dropped: 0,
        }
    }

    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    /// Returns the output as text; bytes that are not UTF-8 become U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A background reader of one pipe. The captured bytes are shared, so that what was
/// read so far is kept even if the reader has to be abandoned.
#[derive(Debug)]
pub struct Reader {
    captured: Arc<Mutex<Captured>>,
    eof: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    pub fn start(mut pipe: pipe::Receiver, limit: usize) -> Reader {
        let captured = Arc::new(Mutex::new(Captured::default()));
        let eof = Arc::new(Notify::new());
        let shared = captured.clone();
        let eof_signal = eof.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(count) => {
                        let mut captured = shared.lock().expect("output lock poisoned");
                        let room = limit.saturating_sub(captured.bytes.len());
                        let kept = count.min(room);
                        captured.bytes.extend_from_slice(&buffer[..kept]);
                        captured.dropped += (count - kept) as u64;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        tracing::warn!(%error, "failed to read task output");
                        break;
                    }
                }
            }
            eof_signal.notify_one();
        });
        Reader {
            captured,
            eof,
            task,
        }
    }

    /// Waits until the pipe reached end-of-file.
    pub async fn closed(&self) {
        if self.task.is_finished() {
            return;
        }
        self.eof.notified().await;
    }

    /// Waits up to `limit` for end-of-file and returns what was captured, and whether the
    /// pipe was still open then.
    pub async fn finish(self, limit: Duration) -> (Captured, bool) {
        let Reader {
            captured,
            eof: _,
            mut task,
        } = self;
        let still_open = tokio::time::timeout(limit, &mut task).await.is_err();
        if still_open {
            task.abort();
        }
        let captured = captured.lock().expect("output lock poisoned").clone();
        (captured, still_open)
    }
}
