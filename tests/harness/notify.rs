//! A fake `NOTIFY_SOCKET`: a unix datagram socket that records every sd_notify
//! message the daemon sends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixDatagram;

/// Receives and keeps sd_notify datagrams. A cursor marks how far earlier waits
/// have consumed them, so each wait only matches messages that arrived after the
/// previous match.
#[derive(Debug)]
pub struct NotifyRecorder {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<String>,
    cursor: usize,
}

impl NotifyRecorder {
    /// Binds the socket at `path`, which must not exist yet.
    pub fn bind(path: &Path) -> Self {
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|err| panic!("bind notify socket {}: {err}", path.display()));
        Self {
            socket,
            path: path.to_owned(),
            received: Vec::new(),
            cursor: 0,
        }
    }

    /// Filesystem path to pass as `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns every datagram received so far, oldest first.
    pub fn messages(&self) -> &[String] {
        &self.received
    }

    /// Returns the first datagram after the cursor that contains a line matching
    /// `expected`, and moves the cursor past it. `expected` matches a whole line,
    /// or a line prefix when it ends with `=` (as in `STATUS=`).
    pub fn take_match(&mut self, expected: &str) -> Option<String> {
        let offset = self.received[self.cursor..]
            .iter()
            .position(|message| message_matches(message, expected))?;
        let index = self.cursor + offset;
        self.cursor = index + 1;
        Some(self.received[index].clone())
    }

    /// Waits up to `timeout` for one datagram and records it. Returns whether one
    /// arrived.
    pub async fn receive(&mut self, timeout: Duration) -> bool {
        let mut buffer = vec![0u8; 4096];
        match tokio::time::timeout(timeout, self.socket.recv(&mut buffer)).await {
            Ok(Ok(len)) => {
                let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
                self.received.push(message);
                true
            }
            Ok(Err(err)) => panic!("receive from notify socket: {err}"),
            Err(_elapsed) => false,
        }
    }
}

fn message_matches(message: &str, expected: &str) -> bool {
    message
        .lines()
        .any(|line| line == expected || (expected.ends_with('=') && line.starts_with(expected)))
}
