//! HTTP/1.1 by hand over a blocking TCP or unix stream socket, for what a full client
//! hides: unix sockets, a connection closed mid-request, and one connection per
//! request during a restart.
//!
//! Each request goes out in a single `write_all`, so it reaches the daemon in one
//! segment, and carries `Connection: close`, so the response ends at end-of-file.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Time limit of one request, so a hung daemon fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The header block, without the status line.
    pub headers: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses the body as JSON. Panics with the raw body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body of HTTP {} is not JSON ({err}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a complete request. `bearer` adds `Authorization: Bearer KEY`.
pub fn request_bytes(method: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: rtask.test\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = bearer {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Connects to `addr`, sends `request` and reads the response to end-of-file.
pub fn tcp_exchange(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> io::Result<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(&mut stream, request)
}

/// Connects to the unix socket at `path`, sends `request` and reads the response to
/// end-of-file.
pub fn unix_exchange(path: &Path, request: &[u8], timeout: Duration) -> io::Result<RawResponse> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(&mut stream, request)
}

/// Runs [`tcp_exchange`] on the blocking pool. Panics when the connection fails.
pub async fn tcp_request(addr: SocketAddr, request: Vec<u8>) -> RawResponse {
    tokio::task::spawn_blocking(move || tcp_exchange(addr, &request, REQUEST_TIMEOUT))
        .await
        .expect("request thread")
        .unwrap_or_else(|err| panic!("HTTP request to {addr}: {err}"))
}

/// Runs [`unix_exchange`] on the blocking pool. Panics when the connection fails.
pub async fn unix_request(path: &Path, request: Vec<u8>) -> RawResponse {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || unix_exchange(&owned, &request, REQUEST_TIMEOUT))
        .await
        .expect("request thread")
        .unwrap_or_else(|err| panic!("HTTP request to {}: {err}", path.display()))
}

/// Sends `request` in one write and reads the response until the server closes.
pub fn exchange<S: Read + Write>(stream: &mut S, request: &[u8]) -> io::Result<RawResponse> {
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses a whole response: status line, headers, and a body that is either chunked
/// or everything after the headers.
pub fn parse_response(raw: &[u8]) -> io::Result<RawResponse> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} in response {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| invalid("non-UTF-8 headers"))?;
    let rest = &raw[split + 4..];
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let chunked = headers.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        decode_chunked(rest).ok_or_else(|| invalid("malformed chunked body"))?
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status,
        headers: headers.to_owned(),
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// A request whose handler has accepted its headers and waits for its body. It is sent
/// with `Expect: 100-continue`, so the daemon sends `100 Continue` when the handler,
/// past the key check, starts reading the body.
pub struct AwaitingBody {
    stream: TcpStream,
}

impl AwaitingBody {
    /// Sends the headers of `POST path` with a one-byte body and returns once the
    /// daemon sends `100 Continue`. Panics on any other response.
    pub async fn send_head(addr: SocketAddr, path: &str, bearer: Option<&str>) -> AwaitingBody {
        let authorization = bearer
            .map(|key| format!("Authorization: Bearer {key}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: rtask\r\nConnection: close\r\n{authorization}\
             Content-Length: 1\r\nExpect: 100-continue\r\n\r\n"
        );
        tokio::task::spawn_blocking(move || AwaitingBody::send_head_blocking(addr, &head))
            .await
            .expect("request thread")
    }

    fn send_head_blocking(addr: SocketAddr, head: &str) -> AwaitingBody {
        let mut stream = TcpStream::connect(addr).expect("connect to the daemon");
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .expect("set a read timeout");
        stream.write_all(head.as_bytes()).expect("send the headers");
        let mut interim = Vec::new();
        while !interim.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream
                .read_exact(&mut byte)
                .expect("read the interim response");
            interim.push(byte[0]);
        }
        assert!(
            interim.starts_with(b"HTTP/1.1 100"),
            "expected 100 Continue, got {:?}",
            String::from_utf8_lossy(&interim)
        );
        AwaitingBody { stream }
    }

    /// Sends the body and returns the response.
    pub async fn finish(mut self) -> RawResponse {
        tokio::task::spawn_blocking(move || exchange(&mut self.stream, b"x"))
            .await
            .expect("request thread")
            .expect("response to the body")
    }
}

#[test]
fn parse_response_reads_length_body() {
    let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";

    let response = parse_response(raw).expect("valid response");

    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"{}");
}

#[test]
fn parse_response_decodes_chunks() {
    let raw = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";

    let response = parse_response(raw).expect("valid response");

    assert_eq!(response.status, 404);
    assert_eq!(response.body, b"abcde");
}
