//! Metrics on real nodes: `/metrics` is valid OpenMetrics whose names follow Prometheus
//! conventions (checked by a strict Rust parser and by `promtool`), counters move with
//! commits, every metric the Grafana dashboard queries exists, and a real Prometheus
//! server scrapes a net and answers queries about it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use serde_json::Value;
use tally_tests::{account_key, eventually, transfer, TestNet};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Unit-less names of third-party families we cannot rename, matched by suffix.
const THIRD_PARTY_UNIT_EXCEPTIONS: &[&str] = &["swarm_connections_establishment_duration"];

/// Words of a HELP text that say the value is a duration or a size; the name must then
/// carry the base unit.
const TIME_WORDS: &[&str] = &["time", "latency", "duration", "interval", "rtt", "seconds"];
const SIZE_WORDS: &[&str] = &["bytes", "byte", "memory"];
/// Name parts that mean a unit other than the base one.
const NON_BASE_UNITS: &[&str] = &[
    "milliseconds",
    "microseconds",
    "nanoseconds",
    "ms",
    "us",
    "ns",
    "minutes",
    "hours",
    "days",
    "kb",
    "mb",
    "gb",
    "kib",
    "mib",
    "gib",
    "kilobytes",
    "megabytes",
    "percent",
];

/// This crate's directory, read at run time (cargo and nextest set it) so that a test
/// binary reused from another checkout of the same sources reads this checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn repo_file(rel: &str) -> PathBuf {
    manifest_dir().join("..").join(rel)
}

/// GET `/metrics` of node `i`; checks the OpenMetrics content type.
async fn scrape(net: &TestNet, i: usize) -> String {
    let r = net.http.get(net.metrics_url(i)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        ct.starts_with("application/openmetrics-text"),
        "content type {ct:?}"
    );
    r.text().await.unwrap()
}

/// Strict OpenMetrics parse (after leaving out the known negative-bucket `_sum`s).
///
/// openmetrics-parser's PEG grammar (`metricdescriptor+ ~ metric*`, greedy) runs the
/// descriptors of consecutive sample-less families into one family and then rejects
/// the next family's samples, although OpenMetrics allows families with no metrics
/// (a labelled family before its first event). So the document is cut into families
/// here, each parsed on its own as a complete exposition; what spans families (one
/// `# EOF`, last; no family twice) is checked here. It also refuses `# UNIT` on
/// histograms, which OpenMetrics allows (libp2p-metrics sends one): those lines are
/// checked here (the unit must end the name) and left out.
fn parse(text: &str) -> Exposition {
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    let body = text
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("/metrics does not end with \"# EOF\":\n{text}"));
    assert!(!body.contains("# EOF"), "# EOF before the end:\n{text}");
    let mut blocks: Vec<String> = Vec::new();
    let mut family: Option<&str> = None;
    for line in body.lines() {
        if let Some((name, unit)) = line.strip_prefix("# UNIT ").and_then(|r| r.split_once(' ')) {
            assert!(
                name.ends_with(&format!("_{unit}")),
                "{name}: the unit {unit:?} must end the name"
            );
            if histograms.contains(name) {
                continue;
            }
        }
        let descriptor_of = line
            .strip_prefix("# ")
            .and_then(|rest| rest.split(' ').nth(1));
        if blocks.is_empty() || (descriptor_of.is_some() && descriptor_of != family) {
            blocks.push(String::new());
            family = descriptor_of;
        }
        let block = blocks.last_mut().expect("a block");
        block.push_str(line);
        block.push('\n');
    }
    let mut expo = Exposition::new();
    for block in blocks {
        let one = openmetrics_parser::openmetrics::parse_openmetrics(&format!("{block}# EOF\n"))
            .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics: {e} in\n{block}"));
        for (name, f) in one.families {
            assert!(
                expo.families.insert(name.clone(), f).is_none(),
                "family {name} appears twice"
            );
        }
    }
    expo
}

/// The value of an unlabelled gauge or counter.
fn scalar(expo: &Exposition, family: &str) -> f64 {
    let f = expo
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    let s = f
        .iter_samples()
        .next()
        .unwrap_or_else(|| panic!("{family} has no sample"));
    match &s.value {
        OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
        OpenMetricsValue::Counter(c) => c.value.as_f64(),
        other => panic!("{family} is not a scalar: {other:?}"),
    }
}

/// Series names a family exposes, by type: what PromQL can select.
fn series_names(family: &str, kind: OpenMetricsType) -> Vec<String> {
    match kind {
        OpenMetricsType::Counter => vec![format!("{family}_total"), format!("{family}_created")],
        OpenMetricsType::Histogram | OpenMetricsType::GaugeHistogram => {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{family}{s}"))
                .collect()
        }
        OpenMetricsType::Summary => vec![
            family.to_string(),
            format!("{family}_sum"),
            format!("{family}_count"),
        ],
        OpenMetricsType::Info => vec![format!("{family}_info")],
        _ => vec![family.to_string()],
    }
}

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Every way a family can break the naming conventions; empty when it follows them.
fn convention_problems(expo: &Exposition, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, f) in &expo.families {
        let third_party = name.starts_with("libp2p_");
        if !(name.starts_with("tally_") || third_party) {
            problems.push(format!("{name}: not prefixed tally_ or libp2p_"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            problems.push(format!("{name}: not snake_case"));
        }
        if f.help.trim().is_empty() {
            problems.push(format!("{name}: no HELP"));
        }
        let parts: Vec<&str> = name.split('_').collect();
        if let Some(u) = parts.iter().find(|p| NON_BASE_UNITS.contains(p)) {
            problems.push(format!("{name}: unit {u:?} is not a base unit"));
        }
        match f.family_type {
            // The encoder appends `_total`; a family name ending in it would give
            // `_total_total`.
            OpenMetricsType::Counter if name.ends_with("_total") => {
                problems.push(format!("{name}: counter family named with _total"))
            }
            OpenMetricsType::Counter => {}
            _ if name.ends_with("_total") => {
                problems.push(format!("{name}: only counters end in _total"))
            }
            _ => {}
        }
        let exempt = third_party
            && THIRD_PARTY_UNIT_EXCEPTIONS
                .iter()
                .any(|s| name.ends_with(s));
        let help = words(&f.help);
        if !exempt && TIME_WORDS.iter().any(|w| help.contains(*w)) && !parts.contains(&"seconds") {
            problems.push(format!(
                "{name}: HELP {:?} is about time but the name has no _seconds",
                f.help
            ));
        }
        if !exempt && SIZE_WORDS.iter().any(|w| help.contains(*w)) && !parts.contains(&"bytes") {
            problems.push(format!(
                "{name}: HELP {:?} is about a size but the name has no _bytes",
                f.help
            ));
        }
        // Low cardinality: no per-peer, per-tx or per-account label values, few series.
        let mut series = 0;
        for s in f.iter_samples() {
            series += 1;
            if let Ok(ls) = s.get_labelset() {
                for (k, v) in ls.iter() {
                    let hexish = v.len() >= 32 && v.chars().all(|c| c.is_ascii_hexdigit());
                    // libp2p's protocol stacks ("/ip4/tcp") are bounded; concrete
                    // addresses and peer ids are not.
                    let address = v.contains("/p2p/")
                        || v.split("/ip4/")
                            .skip(1)
                            .any(|a| a.starts_with(|c: char| c.is_ascii_digit()));
                    if hexish || v.starts_with("12D3Koo") || address {
                        problems.push(format!("{name}: label {k}={v:?} is unbounded"));
                    }
                }
            }
        }
        if series > 64 {
            problems.push(format!("{name}: {series} series"));
        }
    }
    // HELP is an escaped string: `"` and `\` only as `\"`, `\\`, `\n`. The parser takes
    // anything up to the newline, so this is checked here. libp2p-metrics' texts contain
    // raw quotes that prometheus-client does not escape: reported, not ours to fix.
    for line in text.lines() {
        let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|r| r.split_once(' '))
        else {
            continue;
        };
        if name.starts_with("libp2p_") {
            continue;
        }
        let mut chars = help.chars();
        while let Some(c) = chars.next() {
            let bad = match c {
                '"' => true,
                '\\' => !matches!(chars.next(), Some('\\' | 'n' | '"')),
                _ => false,
            };
            if bad {
                problems.push(format!("{name}: HELP {help:?} is not an escaped string"));
                break;
            }
        }
    }
    // Independently of the parser: every sample line of a counter is `<family>_total`
    // (or `_created`), so queries can rely on the suffix.
    let mut counters = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(fam) = rest.strip_suffix(" counter") {
                counters.insert(fam.to_string());
            }
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        // A counter's own samples (`tally_sync_blocks_served_total` is not a stray sample
        // of the family `tally_sync_blocks`).
        let own = counters
            .iter()
            .any(|f| sample == format!("{f}_total") || sample == format!("{f}_created"));
        if own {
            continue;
        }
        for fam in &counters {
            if sample.starts_with(fam.as_str())
                && sample != format!("{fam}_total")
                && sample != format!("{fam}_created")
                && !expo.families.contains_key(sample)
            {
                problems.push(format!("counter sample {sample} does not end in _total"));
            }
        }
    }
    problems
}

/// The OpenMetrics → Prometheus text (0.0.4) mapping: a counter family `x` is `x_total`
/// there. `promtool check metrics` reads the text format, and without this it would
/// see every counter sample as an untyped metric without HELP.
fn to_prometheus_text(text: &str) -> String {
    let counters: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (hash, kw, name) = (fields.next(), fields.next(), fields.next());
        match (hash, kw, name) {
            (Some("#"), Some(kw @ ("HELP" | "TYPE")), Some(name)) if counters.contains(name) => {
                out.push_str(&format!(
                    "# {kw} {name}_total {}\n",
                    fields.next().unwrap_or_default()
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Output of `promtool check metrics` for the exposition: `Ok(())` when it is clean,
/// `Err(findings)` otherwise, `None` when promtool is not installed.
fn promtool_check(text: &str) -> Option<Result<(), String>> {
    use std::io::Write;
    let promtool = which("promtool")?;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(to_prometheus_text(text).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && findings.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool exit {}: {findings}", out.status))
    })
}

/// A valid, conventional exposition from a node that has done some of everything:
/// committed blocks with a tx, refused a tx, served RPC, talked to a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_openmetrics_with_conventional_names() {
    let net = TestNet::builder()
        .validators(2)
        .accounts(2)
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();
    let id = net
        .submit_accepted(0, &transfer(&account_key(0), 0, [9; 20], 5, 1))
        .await
        .unwrap();
    net.wait_committed(0, &id, Duration::from_secs(30))
        .await
        .unwrap();
    // Refused (its nonce is used now): a labelled rejection series and a 4xx RPC status.
    let (status, _) = net
        .submit(0, &transfer(&account_key(0), 0, [9; 20], 5, 1))
        .await
        .unwrap();
    assert!(status >= 400);
    let _ = net.get(0, "/v1/no-such-route").await;

    let text = scrape(&net, 0).await;
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator");
    let expo = parse(&text);

    // Negative controls: the parser really rejects what the checks rely on.
    let bad_counter = "# TYPE x counter\nx 1\n# EOF\n";
    assert!(openmetrics_parser::openmetrics::parse_openmetrics(bad_counter).is_err());
    assert!(openmetrics_parser::openmetrics::parse_openmetrics("x 1\n").is_err());
    let total_total = "# TYPE x_total counter\nx_total_total 1\n# EOF\n";
    assert!(openmetrics_parser::openmetrics::parse_openmetrics(total_total).is_err());

    let problems = convention_problems(&expo, &text);
    assert!(
        problems.is_empty(),
        "naming problems:\n{}",
        problems.join("\n")
    );
    // The families DESIGN.md section 7 promises, by exposed series name.
    for name in [
        "tally_block_height",
        "tally_block_interval_seconds_bucket",
        "tally_block_txs_bucket",
        "tally_txs_committed_total",
        "tally_consensus_round",
        "tally_consensus_rounds_per_height_bucket",
        "tally_mempool_txs",
        "tally_mempool_bytes",
        "tally_mempool_rejections_total",
        "tally_peers",
        "tally_gossip_messages_total",
        "tally_invalid_messages_total",
        "tally_peer_bans_total",
        "tally_sync_catching_up",
        "tally_sync_target_height",
        "tally_sync_blocks_total",
        "tally_rpc_requests_total",
        "tally_rpc_request_duration_seconds_bucket",
        "tally_block_execution_seconds_bucket",
        "tally_db_size_bytes",
        "tally_process_resident_memory_bytes",
        "tally_process_cpu_seconds_total",
        "tally_process_open_fds",
    ] {
        assert!(
            resolves(&expo, name),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert!(
        expo.families.keys().any(|k| k.starts_with("libp2p_")),
        "no libp2p_ families"
    );
    // Labelled series are there once something happened.
    assert!(
        text.contains("tally_gossip_messages_total{topic="),
        "{text}"
    );
    assert!(text.contains("tally_rpc_requests_total{route=\"/v1/txs\",status=\"202\"}"));
    assert!(text.contains("tally_rpc_requests_total{route=\"unmatched\",status=\"404\"}"));
    assert!(scalar(&expo, "tally_peers") >= 1.0);
    assert!(scalar(&expo, "tally_process_resident_memory_bytes") > 1e6);
    assert!(scalar(&expo, "tally_process_open_fds") > 3.0);

    // The metrics reference cannot rot either: every tally_ family is documented.
    let reference = std::fs::read_to_string(repo_file("configs/README.md")).unwrap();
    let undocumented: Vec<String> = expo
        .families
        .iter()
        .filter(|(name, _)| name.starts_with("tally_"))
        .map(|(name, f)| match f.family_type {
            OpenMetricsType::Counter => format!("{name}_total"),
            _ => name.clone(),
        })
        .filter(|name| !reference.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in the metrics reference of configs/README.md: {undocumented:?}"
    );

    let _ = prometheus_binary(); // brings promtool where installing is allowed
    match promtool_check(&text) {
        Some(Ok(())) => {}
        Some(Err(findings)) => panic!("promtool check metrics: {findings}"),
        None => eprintln!(
            "SKIPPED the promtool half: promtool is not installed (apt-get install prometheus)"
        ),
    }
}

/// Negative control for the convention checks: each kind of bad name is caught.
#[test]
fn convention_checks_catch_bad_names() {
    let text = "# HELP tally_wait_ms Time waited.\n# TYPE tally_wait_ms gauge\ntally_wait_ms 1\n\
                # HELP tally_lag Time behind.\n# TYPE tally_lag gauge\ntally_lag 1\n\
                # HELP tally_heap Heap memory.\n# TYPE tally_heap gauge\ntally_heap 1\n\
                # HELP tally_peer_msgs Messages per peer.\n# TYPE tally_peer_msgs gauge\n\
                tally_peer_msgs{peer=\"12D3KooWKZnVzWCzxytWKxu6qsoo1PhZbeR9RAcmyVfdCwk7FcTA\"} 1\n\
                # HELP tally_quote Says \"hi\".\n# TYPE tally_quote gauge\ntally_quote 1\n\
                # HELP other_height Height.\n# TYPE other_height gauge\nother_height 1\n# EOF\n";
    let problems = convention_problems(&parse(text), text).join("\n");
    for expected in [
        "tally_wait_ms: unit \"ms\" is not a base unit",
        "tally_lag: HELP \"Time behind.\" is about time",
        "tally_heap: HELP \"Heap memory.\" is about a size",
        "tally_peer_msgs: label peer=",
        "tally_quote: HELP",
        "other_height: not prefixed",
    ] {
        assert!(
            problems.contains(expected),
            "{expected:?} not caught in:\n{problems}"
        );
    }
    let clean = "# HELP tally_lag_seconds Time behind.\n# TYPE tally_lag_seconds gauge\ntally_lag_seconds 1\n# EOF\n";
    assert!(convention_problems(&parse(clean), clean).is_empty());
}

/// A metric name as PromQL writes it resolves to a family of the exposition.
fn resolves(expo: &Exposition, name: &str) -> bool {
    expo.families
        .iter()
        .any(|(fam, f)| series_names(fam, f.family_type).iter().any(|s| s == name))
}

/// After N txs are committed, `tally_txs_committed_total` rose by exactly N on every
/// node (validators and a full node), and `tally_block_height` is the height
/// `/v1/status` reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_commits_and_height_matches_status() {
    const N: u64 = 12;
    let owned = TestNet::builder()
        .validators(2)
        .full_nodes(1)
        .accounts(3)
        .start()
        .await
        .unwrap();
    let net = &owned;
    let nodes = net.nodes.len();
    net.wait_for_height(2, Duration::from_secs(60))
        .await
        .unwrap();
    let mut before = Vec::new();
    for i in 0..nodes {
        before.push(scalar(&parse(&scrape(net, i).await), "tally_txs_committed"));
    }
    let mut ids = Vec::new();
    for n in 0..N {
        let from = (n % 3) as usize;
        let tx = transfer(&account_key(from), n / 3, [7; 20], 10, 1);
        let node = n as usize % nodes;
        let id = net.submit_accepted(node, &tx).await;
        ids.push(id.unwrap_or_else(|e| panic!("tx {n}: {e}")));
    }
    for i in 0..nodes {
        for id in &ids {
            net.wait_committed(i, id, Duration::from_secs(60))
                .await
                .unwrap();
        }
    }
    for (i, b) in before.iter().enumerate() {
        // The tx index is written before the counter moves: wait for it, never past it.
        let want = b + N as f64;
        eventually(
            Duration::from_secs(10),
            "counter reaching N",
            move || async move {
                let got = scalar(&parse(&scrape(net, i).await), "tally_txs_committed");
                assert!(got <= want, "node {i}: {got} txs counted, want {want}");
                if got == want {
                    Ok(())
                } else {
                    Err(format!("node {i}: {got}"))
                }
            },
        )
        .await;
    }
    // Empty blocks since must not move it.
    let h = net.height(0).await.unwrap();
    net.wait_for_height(h + 2, Duration::from_secs(30))
        .await
        .unwrap();
    for (i, b) in before.iter().enumerate() {
        let expo = parse(&scrape(net, i).await);
        assert_eq!(
            scalar(&expo, "tally_txs_committed"),
            b + N as f64,
            "node {i}"
        );
        assert!(scalar(&expo, "tally_blocks_committed") >= (h + 2) as f64 - 1.0);
    }
    // Heights move every ~200 ms: compare at a moment both reads agree, with the status
    // read on both sides of the scrape.
    for i in 0..nodes {
        eventually(
            Duration::from_secs(20),
            "metric height = status height",
            move || async move {
                let s1 = net.height(i).await.map_err(|e| e.to_string())?;
                let m = scalar(&parse(&scrape(net, i).await), "tally_block_height") as u64;
                let s2 = net.height(i).await.map_err(|e| e.to_string())?;
                assert!(m + 1 >= s1, "node {i}: metric {m} behind status {s1}");
                if s1 == m && m == s2 {
                    Ok(())
                } else {
                    Err(format!("node {i}: status {s1}/{s2}, metric {m}"))
                }
            },
        )
        .await;
    }
}

/// Every `tally_*`/`libp2p_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("tally_") || t.starts_with("libp2p_"))
        .map(str::to_string)
        .collect()
}

fn dashboard() -> Value {
    let path = repo_file("configs/grafana/tally-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard: panel targets and template queries.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The dashboard cannot rot silently: each metric any of its queries names exists on a
/// live node, with the suffix its type gives it; each panel reads the datasource
/// variable, so the JSON imports into any Grafana.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_exists_on_a_live_node() {
    let dash = dashboard();

    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus datasource variable"
    );
    let mut panels: Vec<&Value> = dash["panels"].as_array().unwrap().iter().collect();
    let mut by_name = BTreeMap::new();
    let mut i = 0;
    while i < panels.len() {
        let p = panels[i];
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter());
        }
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {:?} does not use the datasource variable",
                p["title"]
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {:?} has no query", p["title"]);
            for t in targets {
                for name in metric_names(t["expr"].as_str().unwrap()) {
                    by_name
                        .entry(name)
                        .or_insert_with(Vec::new)
                        .push(p["title"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        i += 1;
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    for e in &all {
        for name in metric_names(e) {
            by_name.entry(name).or_default();
        }
    }
    assert!(
        by_name.len() >= 20,
        "only {} metrics queried",
        by_name.len()
    );

    let net = TestNet::builder()
        .validators(1)
        .accounts(1)
        .start_at_height(1, Duration::from_secs(30))
        .await
        .unwrap();
    let expo = parse(&scrape(&net, 0).await);
    let missing: Vec<String> = by_name
        .iter()
        .filter(|(name, _)| !resolves(&expo, name))
        .map(|(name, panels)| format!("{name} (panels {panels:?})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the node does not expose:\n{}",
        missing.join("\n")
    );
}

/// An instant query through Prometheus's HTTP API; `Err` unless it answered "success".
async fn query(http: &reqwest::Client, url: &str, q: &str) -> Result<Value, String> {
    let r = http
        .get(url)
        .query(&[("query", q)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if v["status"] == "success" {
        Ok(v)
    } else {
        Err(v.to_string())
    }
}

/// Kills and reaps a child process on drop, even when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// The `prometheus` binary; installs Debian's package (which brings `promtool` too)
/// first when allowed: root, and CI=true or TALLY_INSTALL_PROMETHEUS=1. Once per test
/// process, so concurrent tests never race for dpkg's lock.
fn prometheus_binary() -> Option<PathBuf> {
    static ONCE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ONCE.get_or_init(install_prometheus).clone()
}

fn install_prometheus() -> Option<PathBuf> {
    if let Some(p) = which("prometheus") {
        return Some(p);
    }
    let allowed = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("TALLY_INSTALL_PROMETHEUS").is_ok_and(|v| v == "1");
    if !(allowed && is_root()) {
        return None;
    }
    eprintln!("installing Debian's prometheus package");
    let ok = Command::new("sh")
        .args([
            "-c",
            "timeout 600 apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
             timeout 600 apt-get install -y -q --no-install-recommends prometheus >/dev/null",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("apt-get install prometheus failed");
    }
    which("prometheus")
}

/// A real Prometheus scrapes a 2-node net and `tally_block_height` of both nodes comes
/// back through its query API, matching what the nodes report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_nodes_and_answers_queries() {
    let Some(prometheus) = prometheus_binary() else {
        eprintln!(
            "SKIPPED: prometheus is not installed. `apt-get install prometheus`, or run as root \
             with TALLY_INSTALL_PROMETHEUS=1 to let this test install it"
        );
        return;
    };
    // The shipped config must be valid too.
    if let Some(promtool) = which("promtool") {
        let out = Command::new(promtool)
            .args(["check", "config"])
            .arg(repo_file("configs/prometheus.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "configs/prometheus.yml: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let net = TestNet::builder()
        .validators(2)
        .accounts(1)
        .start_at_height(2, Duration::from_secs(60))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = (0..2)
        .map(|i| {
            net.metrics_url(i)
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_string()
        })
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tally\n    static_configs:\n      - targets: [\"{}\"]\n        labels: {{ node: node0 }}\n      - targets: [\"{}\"]\n        labels: {{ node: node1 }}\n",
        targets[0], targets[1]
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    // A free port on loopback (the tiny window before Prometheus binds it is harmless
    // on a test machine; a clash shows as Prometheus exiting, reported below).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prom = KillOnDrop(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let url = format!("http://{listen}/api/v1/query");
    let log_path = dir.path().join("prometheus.log");
    let deadline = started + Duration::from_secs(60);
    let heights = loop {
        if let Ok(Some(status)) = prom.0.try_wait() {
            panic!(
                "prometheus exited with {status}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let last = match query(&net.http, &url, "tally_block_height{job=\"tally\"}").await {
            Ok(v) => {
                let heights: BTreeMap<String, u64> = v["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| {
                        let node = s["metric"]["node"].as_str()?.to_string();
                        let h = s["value"][1].as_str()?.parse::<u64>().ok()?;
                        Some((node, h))
                    })
                    .collect();
                if heights.len() == 2 && heights.values().all(|h| *h >= 2) {
                    break heights;
                }
                v.to_string()
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "tally_block_height of both nodes not in Prometheus within 60 s; last answer: {last}\nlog:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What Prometheus holds was scraped from the nodes: never ahead of them now.
    for (i, node) in ["node0", "node1"].iter().enumerate() {
        let now = net.height(i).await.unwrap();
        assert!(heights[*node] <= now, "{node}: {heights:?} vs {now}");
        assert!(heights[*node] >= 2);
    }
    // Prometheus's own OpenMetrics parser took every scrape: both targets up, no error.
    let targets: Value = net
        .http
        .get(format!("http://{listen}/api/v1/targets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 2, "{targets}");
    for t in active {
        assert_eq!(t["health"], "up", "{t}");
        assert_eq!(t["lastError"], "", "{t}");
    }
    // Every dashboard query is PromQL this Prometheus accepts (with the Grafana
    // variables filled in as Grafana would).
    let mut all = Vec::new();
    exprs(&dashboard(), &mut all);
    let panel_queries: Vec<&String> = all.iter().filter(|e| !e.contains("label_values")).collect();
    assert!(panel_queries.len() >= 20);
    for e in panel_queries {
        let q = e.replace("$node", ".*").replace("$__rate_interval", "15s");
        if let Err(err) = query(&net.http, &url, &q).await {
            panic!("dashboard query {q:?} refused by Prometheus: {err}");
        }
    }
    // Both targets are up.
    let v = query(&net.http, &url, "sum(up{job=\"tally\"})")
        .await
        .unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");
    eprintln!(
        "prometheus answered after {:?}: {heights:?}",
        started.elapsed()
    );
    drop(prom);
}
