//! The systemd protocols against the real binary: socket activation, `sd_notify`
//! readiness, reload, stop and watchdog messages, graceful stop, and a restart on the
//! same listening socket while clients keep connecting.

mod activation;
mod notify;
mod restart;
mod socket_activate;
mod stop;

use std::net::{SocketAddr, TcpListener};

use crate::harness::raw_http::{self, RawResponse};

/// Name of the key the tests create.
pub const KEY_NAME: &str = "ci";

/// A configuration with one task, `echo`, that copies stdin to stdout.
pub const ECHO_CONFIG: &str = r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#;

/// Binds a listening TCP socket on a free loopback port.
pub fn tcp_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("listener address")
}

/// `POST /tasks/echo` with `body` over a new TCP connection.
pub async fn post_echo(addr: SocketAddr, key: &str, body: &str) -> RawResponse {
    let request = raw_http::request_bytes("POST", "/tasks/echo", Some(key), body.as_bytes());
    raw_http::tcp_request(addr, request).await
}

/// `GET /metrics` over a new TCP connection.
pub async fn get_metrics(addr: SocketAddr) -> RawResponse {
    let request = raw_http::request_bytes("GET", "/metrics", None, b"");
    raw_http::tcp_request(addr, request).await
}
