//! Round trip of API requests through the real `rtask` binary, each over a new loopback
//! connection. Three cases: a synchronous run of `true`, a run whose 8 MiB of output is
//! cut to the 16 KiB default, and a request with a key id the task does not allow.
//! After the runs the daemon's resident memory is printed, next to the baseline.
//!
//! Run with `cargo bench --bench requests`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

const CONFIG: &str = r#"
[tasks.true]
command = ["true"]
apiKeyNames = ["bench"]

[tasks.flood]
command = ["head", "-c", "8388608", "/dev/zero"]
apiKeyNames = ["bench"]
"#;

/// A daemon started for the benchmark, killed when dropped.
struct Daemon {
    child: Child,
    address: SocketAddr,
    key: String,
    _dir: tempfile::TempDir,
}

impl Daemon {
    #[expect(
        clippy::disallowed_methods,
        reason = "the benchmark starts the real binary"
    )]
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = dir.path().join("config.toml");
        let keys = dir.path().join("keys.toml");
        std::fs::write(&config, CONFIG).expect("write the config");
        let binary = env!("CARGO_BIN_EXE_rtask");

        let output = std::process::Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("--api-keys-file")
            .arg(&keys)
            .args(["add-key", "bench"])
            .output()
            .expect("run rtask add-key");
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
        let key = stdout
            .trim()
            .strip_prefix("API-KEY: ")
            .expect("add-key prints the key")
            .to_owned();

        let mut child = std::process::Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("--api-keys-file")
            .arg(&keys)
            .args(["--log-format", "text", "run"])
            .args([
                "--api-address",
                "127.0.0.1:0",
                "--metrics-address",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn,rtask=info")
            .env_remove("JOURNAL_STREAM")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rtask run");
        let address = read_api_address(&mut child);
        Daemon {
            child,
            address,
            key,
            _dir: dir,
        }
    }

    fn post(&self, path: &str, key: &str) -> u16 {
        let mut stream = TcpStream::connect(self.address).expect("connect");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("receive");
        let status = std::str::from_utf8(&response[9..12]).expect("status line");
        status.parse().expect("numeric status")
    }

    fn resident_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
            .expect("VmRSS line")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the daemon's log until it names the API address it bound.
fn read_api_address(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the daemon exited before listening")
            .expect("read the log");
        if line.contains("listening") && line.contains("socket=api") {
            let (_, rest) = line.split_once("address=").expect("address field");
            break rest.trim().parse().expect("socket address");
        }
    };
    // Drain the rest of the log, so the daemon does not block on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    address
}

fn requests(c: &mut Criterion) {
    let daemon = Daemon::start();
    let key = daemon.key.clone();
    // The first request pays for argon2; the ones measured take the cached path.
    assert_eq!(daemon.post("/tasks/true", &key), 200);
    let baseline_kib = daemon.resident_kib();

    let mut group = c.benchmark_group("request");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("sync_true", |b| {
        b.iter(|| assert_eq!(daemon.post("/tasks/true", &key), 200));
    });
    group.bench_function("sync_8mib_output_truncated", |b| {
        b.iter(|| assert_eq!(daemon.post("/tasks/flood", &key), 200));
    });
    // A key id the task does not allow is rejected before argon2.
    let other_id = "ogEBAlgoAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    group.bench_function("rejected_key_not_allowed", |b| {
        b.iter(|| assert_eq!(daemon.post("/tasks/true", other_id), 401));
    });
    group.finish();

    println!(
        "daemon resident memory: {} KiB before, {} KiB after the runs",
        baseline_kib,
        daemon.resident_kib()
    );
}

criterion_group!(benches, requests);
criterion_main!(benches);
