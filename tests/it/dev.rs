use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        let out = sh(&post);
        if out.contains("tx_id") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "dev node never accepted the printed tx: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(accepted.contains("tx_id"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sh(&query);
        if out.contains("\"committed\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "printed tx never committed: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "tallyd dev did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
