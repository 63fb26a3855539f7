//! Running the real `tally` binary in a temporary keystore.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub const PASSWORD: &str = "correct horse";

pub struct Wallet {
    pub dir: tempfile::TempDir,
    node: String,
}

impl Wallet {
    pub fn new(node: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            node: node.to_string(),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.args(args)
            .env("TALLY_KEYS_DIR", self.dir.path().join("keys"))
            .env("TALLY_NODE", &self.node)
            .env("TALLY_KDF_TEST_FAST", "1")
            .env("TALLY_PASSWORD", PASSWORD)
            .env_remove("TALLY_PASSWORD_FILE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tally {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "json mode prints one object: {text}");
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub fn new_key(&self, name: &str) -> [u8; 20] {
        let v = self.json(&["keys", "new", name]);
        ledger::hash::from_hex_array::<20>(v["address"].as_str().unwrap()).unwrap()
    }
}
