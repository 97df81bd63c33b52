//! Binding `--api-address` and `--metrics-address` when no sockets are inherited.

use crate::harness::DaemonBuilder;

#[tokio::test]
async fn listen_port_zero_logged() {
    let builder = DaemonBuilder::new().bind_addresses();
    let key = builder.add_key("ci");
    let daemon = builder
        .start(
            r#"
[tasks.echo]
command = ["cat"]
apiKeyNames = ["ci"]
"#,
        )
        .await;

    // start() read the ports from the `listening` lines; both must be real
    // loopback ports that serve.
    let stderr = daemon.stderr();
    for socket in ["api", "metrics"] {
        let marker = format!("socket={socket}");
        let logged = stderr.lines().any(|line| {
            line.contains("listening") && line.split_whitespace().any(|field| field == marker)
        });
        assert!(logged, "no `listening` line with `{marker}`:\n{stderr}");
    }
    assert!(daemon.api_addr().ip().is_loopback());
    assert_ne!(daemon.api_addr().port(), 0);
    assert!(daemon.metrics_addr().ip().is_loopback());
    assert_ne!(daemon.metrics_addr().port(), 0);
    assert_ne!(daemon.api_addr(), daemon.metrics_addr());
    let reply = daemon.post_task("echo", &key, "bound").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["stdout"], "bound");
    assert!(daemon.metrics().await.contains("task_duration_seconds"));
}
