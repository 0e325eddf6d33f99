//! PostgreSQL stopped and started again under traffic: `keyhaven serve` runs on a
//! PostgreSQL cluster of the test's own (initdb in a temporary directory, its own
//! port), clients read and write without pause, the cluster is stopped, then started
//! again. While it is down the server answers quickly with a clear 503 (never a 500,
//! never a hang, `/healthz` still up, `/readyz` 503 with the reason); once it is back the server serves again by
//! itself, and every write acknowledged before or after is there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{ADMIN, api_key_integration, assert_acknowledged_whole, http, key, serve};
use serde_json::json;

/// A PostgreSQL cluster in a temporary directory, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    _tmp: tempfile::TempDir,
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    // initdb and postgres refuse to run as root: run them as the postgres user.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Cluster {
    fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists());
        let Some(bin) = bin else {
            keyhaven_tests::skip_or_fail(
                "PostgreSQL's server binaries (initdb, pg_ctl) are not installed",
            );
            return None;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pg");
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(tmp.path())
            .status();
        let init = as_postgres(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            bin,
            dir,
            port,
            _tmp: tmp,
        };
        cluster.pg_ctl_start();
        Some(cluster)
    }

    fn pg_ctl_start(&self) {
        let out = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let out = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_traffic() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (_, key_b64) = key();
    let data = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let server = serve(&["--database-url", &url], data.path(), &key_b64);
    let http = http();
    let integration_id = api_key_integration(&http, &server).await;

    // Writers: create connections without pause; record what was acknowledged and
    // every status and how long each answer took.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let answers = Arc::new(std::sync::Mutex::new(Vec::<(u16, Duration, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, stop, acknowledged, answers, integration_id) = (
            http.clone(),
            server.url("/api/v1/connectedAccounts"),
            stop.clone(),
            acknowledged.clone(),
            answers.clone(),
            integration_id.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let api_key = format!("sk-restart-{w}-{n}");
                let started = std::time::Instant::now();
                let r = http
                    .post(&url)
                    .header("x-api-key", ADMIN)
                    .json(&json!({"integrationId": integration_id, "entityId": format!("w{w}"), "data": {"api_key": api_key}}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                answers.lock().unwrap().push((status, started.elapsed(), body.to_string()));
                if status == 200 {
                    let id = body["connectedAccountId"].as_str().unwrap().to_owned();
                    acknowledged.lock().unwrap().push((id, api_key));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acknowledged.lock().unwrap().len();
    assert!(before > 0, "writes go through before the stop");
    let ready = || async {
        let r = http.get(server.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, 200, "ready before the stop");

    cluster.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Down: the server itself answers.
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // ... but it is not ready, and says why, within its 2 s bound.
    let asked = std::time::Instant::now();
    let (status, why) = ready().await;
    assert_eq!(status, 503, "{why}");
    assert_eq!(why["status"], "unavailable");
    assert!(
        why["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{why}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "readyz answers quickly"
    );
    let during: Vec<_> = answers.lock().unwrap().clone();

    cluster.pg_ctl_start();
    // Back: the server serves again by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = acknowledged.lock().unwrap().len();
        if n > before + 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes resume after PostgreSQL is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready().await.0, 200, "ready again once PostgreSQL is back");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    // Every answer was a success or a clear 503; no 500.
    let answers = answers.lock().unwrap().clone();
    let unavailable: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    // A write that meets the outage is refused at once (its connection broke), or
    // waits for a connection until PostgreSQL is back (bounded by the pool's acquire
    // timeout, 30 s) and then goes through: either way the outage shows.
    let waited = answers
        .iter()
        .any(|(_, took, _)| *took >= Duration::from_secs(1));
    assert!(
        !unavailable.is_empty() || waited || during.len() == answers.len(),
        "the outage was seen: no write was refused or waited"
    );
    for (status, took, body) in &answers {
        assert!(
            *status == 200 || *status == 503,
            "only successes and 503s: {status} {body}"
        );
        if *status == 503 {
            assert!(
                body.contains("PostgreSQL") || body.contains("store"),
                "a clear error: {body}"
            );
            assert!(!body.contains("sk-restart"), "no secret in errors: {body}");
            assert!(
                *took < Duration::from_secs(35),
                "a 503 comes without a long hang: {took:?}"
            );
        }
    }
    // Nothing acknowledged is lost.
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_acknowledged_whole(&http, &server, &acknowledged).await;
    let worst = unavailable
        .iter()
        .map(|(_, t, _)| *t)
        .max()
        .unwrap_or_default();
    println!(
        "RESTART: {} writes acknowledged ({} before the stop), {} answered 503 while PostgreSQL was down (slowest {worst:?}), 0 lost",
        acknowledged.len(),
        before,
        unavailable.len()
    );
}
