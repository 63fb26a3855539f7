use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tally_tests::eventually;

/// `tallyd dev` in one terminal and the curl command it prints in another commits a tx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_chain_commits_the_printed_curl_transfer() {
    // Reserve free ports on a loopback address of our own.
    let port = |ip: &str| {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let ip = "127.0.90.1";
    let (rpc, metrics) = (format!("{ip}:{}", port(ip)), format!("{ip}:{}", port(ip)));
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(tally_tests::bin("tallyd"))
        .args(["dev", "--home"])
        .arg(home.path().join("dev"))
        .args(["--rpc", &rpc, "--metrics", &metrics])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut post = None;
    let mut query = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let line = line.trim().to_string();
        if line.starts_with("Stop with") {
            break;
        }
        if line.starts_with("curl -s -X POST") {
            post = Some(line);
        } else if line.starts_with("curl -s http") {
            query = Some(line);
        }
    }
    let (post, query) = (
        post.expect("dev prints a curl POST"),
        query.expect("and a query"),
    );
    let sh = |cmd: &str| {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The node may still be starting: retry the POST until it answers.
    let accepted = eventually(
        Duration::from_secs(30),
        "the dev node accepting the printed tx",
        || {
            let out = sh(&post);
            async move {
                if out.contains("tx_id") {
                    Ok(out)
                } else {
                    Err(out)
                }
            }
        },
    )
    .await;
    assert!(accepted.contains("tx_id"));
    eventually(Duration::from_secs(30), "the printed tx committed", || {
        let out = sh(&query);
        async move {
            if out.contains("\"committed\"") {
                Ok(())
            } else {
                Err(out)
            }
        }
    })
    .await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    eventually(
        Duration::from_secs(15),
        "tallyd dev stopping on SIGTERM",
        || {
            let exited = child.try_wait().unwrap();
            async move { exited.ok_or_else(|| "still running".to_string()) }
        },
    )
    .await;
}
