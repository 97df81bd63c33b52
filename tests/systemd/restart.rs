//! A restart on the same listening socket under load: the test keeps the socket, as
//! systemd does, while one client thread sends requests on new connections and the
//! daemon is stopped with SIGTERM and started again twice. No request may fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{ECHO_CONFIG, KEY_NAME};
use crate::harness::raw_http::{request_bytes, tcp_exchange};
use crate::harness::{DaemonBuilder, secs, wait_until};

/// Bounds of the client loop.
const MAX_REQUESTS: usize = 300;
const MAX_LOAD_TIME: Duration = Duration::from_secs(20);

/// Pause between two requests, so that the request budget lasts through both
/// restarts.
const REQUEST_PAUSE: Duration = Duration::from_millis(10);

/// Time limit of one request. A restart takes well under a second.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Successful requests to see before and after each restart.
const REQUESTS_PER_PHASE: usize = 10;

/// What the client loop saw.
#[derive(Debug, Default)]
struct LoadReport {
    sent: usize,
    /// Requests without any HTTP response: refused, reset, or closed early.
    connection_errors: Vec<String>,
    /// Responses other than 200 with the echoed body.
    bad_responses: Vec<String>,
}

/// Sends `POST /tasks/echo` on a new connection each time until `stop` is set or a
/// bound is reached. `succeeded` counts the requests that got the expected response.
fn client_loop(
    addr: SocketAddr,
    key: &str,
    stop: &AtomicBool,
    succeeded: &AtomicUsize,
) -> LoadReport {
    let started = Instant::now();
    let mut report = LoadReport::default();
    while !stop.load(Ordering::SeqCst)
        && report.sent < MAX_REQUESTS
        && started.elapsed() < MAX_LOAD_TIME
    {
        let body = format!("request {}", report.sent);
        let request = request_bytes("POST", "/tasks/echo", Some(key), body.as_bytes());
        report.sent += 1;
        match tcp_exchange(addr, &request, REQUEST_TIMEOUT) {
            Err(err) => report.connection_errors.push(format!("{body}: {err}")),
            Ok(response) if response.status != 200 => {
                report.bad_responses.push(format!(
                    "{body}: HTTP {} {}",
                    response.status,
                    response.text()
                ));
            }
            Ok(response) => {
                let echoed = serde_json::from_slice::<serde_json::Value>(&response.body)
                    .map(|result| result["stdout"] == body.as_str())
                    .unwrap_or(false);
                if echoed {
                    succeeded.fetch_add(1, Ordering::SeqCst);
                } else {
                    report
                        .bad_responses
                        .push(format!("{body}: unexpected body {}", response.text()));
                }
            }
        }
        thread::sleep(REQUEST_PAUSE);
    }
    report
}

#[tokio::test]
async fn restart_under_load_no_errors() {
    let builder = DaemonBuilder::new();
    let key = builder.add_key(KEY_NAME);
    let mut daemon = builder.start(ECHO_CONFIG).await;
    let addr = daemon.api_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, succeeded) = (stop.clone(), succeeded.clone());
        thread::spawn(move || client_loop(addr, &key, &stop, &succeeded))
    };

    let mut target = REQUESTS_PER_PHASE;
    for phase in 0..3 {
        if phase > 0 {
            daemon.restart().await;
        }
        wait_until(
            &format!("{target} requests answered (phase {phase})"),
            secs(10.0),
            async || succeeded.load(Ordering::SeqCst) >= target || client.is_finished(),
        )
        .await;
        target = succeeded.load(Ordering::SeqCst) + REQUESTS_PER_PHASE;
    }
    stop.store(true, Ordering::SeqCst);
    let report = client.join().expect("client thread");

    assert!(report.sent <= MAX_REQUESTS);
    assert_eq!(report.connection_errors, Vec::<String>::new());
    assert_eq!(report.bad_responses, Vec::<String>::new());
    assert!(
        succeeded.load(Ordering::SeqCst) >= 3 * REQUESTS_PER_PHASE,
        "only {} of {} requests answered before the client stopped",
        succeeded.load(Ordering::SeqCst),
        report.sent
    );
}
