//! The nodes' processes: spawn, find (pid files checked against /proc), stop, kill and
//! restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{self, signal};
use anyhow::{bail, Context};

use super::faults;
use super::manifest::{check_index, home, load_manifest, Hosts, Manifest};
use crate::config::expand;

pub(super) const SUPERVISOR_PID: &str = "supervisor.pid";

/// How long a node gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) fn pid_file(dir: &Path, i: usize) -> PathBuf {
    home(dir, i).join("pid")
}

pub(super) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live (not zombie) process of this testnet, so a recycled pid is
/// never mistaken for one: a node whose arguments contain `needle` (its canonical home, as
/// the supervisor spawns it), or a supervisor whose directory is `needle` (the canonical
/// testnet dir), however its `--dir` was spelled.
pub(super) fn process_alive(pid: u32, needle: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self").exists() {
        let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        // State is the first field after the parenthesised command name.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        if state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
            return false;
        };
        let args: Vec<String> = cmdline
            .strip_suffix(&[0])
            .unwrap_or(&cmdline)
            .split(|b| *b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let text = needle.to_string_lossy();
        return args.iter().any(|arg| arg.contains(text.as_ref()))
            || supervisor_dir(pid, &args).is_some_and(|dir| dir == needle);
    }
    // No procfs: fall back to "a process with this pid exists".
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The canonical testnet directory of a supervisor, from its arguments `args` (`tallyd
/// testnet up|start [--dir DIR]`, DIR defaulting to ./testnet as in the CLI) resolved
/// against its working directory; `None` for any other command. Its command line holds
/// the directory as typed -- `make testnet` passes `--dir ./testnet` -- so a comparison
/// of text with the canonical path would miss it (issue 16).
fn supervisor_dir(pid: u32, args: &[String]) -> Option<PathBuf> {
    let at = args
        .windows(2)
        .position(|w| w[0] == "testnet" && (w[1] == "up" || w[1] == "start"))?;
    let mut dir = PathBuf::from("./testnet");
    let mut rest = args[at + 2..].iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        } else if arg == "--dir" {
            dir = PathBuf::from(rest.next()?);
        } else if let Some(d) = arg.strip_prefix("--dir=") {
            dir = PathBuf::from(d);
        }
    }
    let dir = expand(&dir);
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .join(dir)
    };
    std::fs::canonicalize(dir).ok()
}

pub(super) fn node_pid(dir: &Path, i: usize) -> Option<u32> {
    read_pid(&pid_file(dir, i)).filter(|pid| process_alive(*pid, &home(dir, i)))
}

/// Starts `tallyd start --home <dir>/nodeI` in its own process group (a Ctrl-C reaches
/// only the supervisor, which stops the nodes in order), output appended to node.log.
/// With netns hosts through `ip netns exec`, which execs tallyd: the pid is the node's.
pub(super) fn spawn_node(dir: &Path, m: &Manifest, i: usize) -> anyhow::Result<Child> {
    let h = home(dir, i);
    let _ = std::fs::remove_file(crate::node::addresses_file(&h));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.join("node.log"))
        .with_context(|| format!("cannot open {}", h.join("node.log").display()))?;
    let exe = std::env::current_exe().context("cannot find the tallyd executable")?;
    let mut cmd = match m.hosts {
        Hosts::Loopback => Command::new(exe),
        Hosts::Netns => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &netns::Names::for_dir(dir).ns(i)])
                .arg(exe);
            c
        }
    };
    cmd.arg("start")
        .arg("--home")
        .arg(&h)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start node{i}"))?;
    std::fs::write(pid_file(dir, i), format!("{}\n", child.id()))?;
    Ok(child)
}

/// SIGTERM every pid, wait up to `STOP_TIMEOUT`, SIGKILL what is left. `children` are
/// reaped as they exit so they do not linger as zombies.
pub(super) fn stop_pids(pids: &[(u32, PathBuf)], children: &mut [Option<Child>], hard: bool) {
    for (pid, _) in pids {
        signal(*pid, if hard { "KILL" } else { "TERM" });
        // A paused node (`testnet pause`) holds a SIGTERM until it runs again.
        signal(*pid, "CONT");
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        for c in children.iter_mut() {
            if let Some(ch) = c {
                if matches!(ch.try_wait(), Ok(Some(_))) {
                    *c = None;
                }
            }
        }
        let left: Vec<&(u32, PathBuf)> = pids
            .iter()
            .filter(|(pid, needle)| process_alive(*pid, needle))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for (pid, _) in &left {
                eprintln!("pid {pid} did not stop within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL");
                signal(*pid, "KILL");
            }
            for ch in children.iter_mut().flatten() {
                let _ = ch.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn kill(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    let Some(pid) = node_pid(dir, i) else {
        println!("node{i} is not running");
        return Ok(());
    };
    stop_pids(&[(pid, home(dir, i))], &mut [], true);
    faults::forget_paused(dir, i);
    let _ = std::fs::remove_file(pid_file(dir, i));
    let _ = std::fs::remove_file(crate::node::addresses_file(&home(dir, i)));
    println!(
        "node{i} (pid {pid}) killed with SIGKILL; start it again with `tallyd testnet restart {i} --dir {}`",
        dir.display()
    );
    Ok(())
}

pub fn restart(dir: &Path, i: usize) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    check_index(&m, i)?;
    if let Some(pid) = node_pid(dir, i) {
        println!("node{i} is running (pid {pid}): stopping it first");
        stop_pids(&[(pid, home(dir, i))], &mut [], false);
    }
    faults::forget_paused(dir, i);
    if m.hosts == Hosts::Netns {
        let ns = netns::Names::for_dir(dir).ns(i);
        if !netns::leftovers(Some(&netns::Names::for_dir(dir).tag))
            .0
            .contains(&ns)
        {
            bail!(
                "namespace {ns} does not exist: start the testnet with `tallyd testnet start --dir {}` (it makes the namespaces)",
                dir.display()
            );
        }
    }
    let pid = start_and_wait(dir, &m, i)?;
    println!(
        "node{i} restarted (pid {pid}), RPC http://{}, log {}",
        m.nodes[i].rpc,
        home(dir, i).join("node.log").display()
    );
    Ok(())
}

/// Starts node `i` in the background and waits until it is up (its addresses file names
/// its pid); the node keeps running after we exit, and the supervisor finds it by its pid
/// file. Its pid.
pub(super) fn start_and_wait(dir: &Path, m: &Manifest, i: usize) -> anyhow::Result<u32> {
    let mut child = spawn_node(dir, m, i)?;
    let pid = child.id();
    let addresses = crate::node::addresses_file(&home(dir, i));
    // A node with a big genesis and no database yet builds its state first.
    let wait = Duration::from_secs(30 + m.genesis_accounts / 50_000);
    let deadline = Instant::now() + wait;
    loop {
        let up = std::fs::read_to_string(&addresses)
            .ok()
            .and_then(|t| serde_json::from_str::<crate::node::Addresses>(&t).ok())
            .is_some_and(|a| a.pid == pid);
        if up {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "node{i} exited with {status}; see {}",
                home(dir, i).join("node.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "node{i} (pid {pid}) did not come up within {} s; see {}",
                wait.as_secs(),
                home(dir, i).join("node.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pid)
}

pub fn stop(dir: &Path) -> anyhow::Result<()> {
    let m = load_manifest(dir)?;
    let mut pids = Vec::new();
    if let Some(pid) = read_pid(&dir.join(SUPERVISOR_PID)).filter(|p| process_alive(*p, dir)) {
        println!("stopping the supervisor (pid {pid})");
        pids.push((pid, dir.to_path_buf()));
    }
    for i in 0..m.nodes.len() {
        if let Some(pid) = node_pid(dir, i) {
            pids.push((pid, home(dir, i)));
        }
    }
    if pids.is_empty() {
        println!("nothing is running in {}", dir.display());
        return Ok(());
    }
    stop_pids(&pids, &mut [], false);
    for i in 0..m.nodes.len() {
        let _ = std::fs::remove_file(pid_file(dir, i));
    }
    println!("stopped {} process(es)", pids.len());
    Ok(())
}

/// Stops our children and any node started by `testnet restart` (found by pid file).
pub(super) fn shutdown(dir: &Path, m: &Manifest, children: &mut [Option<Child>], hard: bool) {
    let mut pids: Vec<(u32, PathBuf)> = Vec::new();
    for i in 0..m.nodes.len() {
        if let Some(pid) = node_pid(dir, i) {
            pids.push((pid, home(dir, i)));
        }
    }
    for (i, c) in children.iter_mut().enumerate() {
        if let Some(ch) = c {
            if matches!(ch.try_wait(), Ok(None)) && !pids.iter().any(|(p, _)| *p == ch.id()) {
                pids.push((ch.id(), home(dir, i)));
            }
        }
    }
    stop_pids(&pids, children, hard);
    for i in 0..m.nodes.len() {
        let _ = std::fs::remove_file(pid_file(dir, i));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A process whose command line is `sh -c 'read _' <args...>` (a shell blocked on its
    /// stdin, so the arguments are its own) in `cwd`: it looks like `tallyd <args...>` to
    /// `process_alive`.
    struct Lookalike(Child);

    impl Lookalike {
        fn spawn(cwd: &Path, args: &[&str]) -> Self {
            let child = Command::new("sh")
                .args(["-c", "read _", "tallyd"])
                .args(args)
                .current_dir(cwd)
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            // spawn returns once the exec has begun, possibly before the new command line
            // is in place (an empty /proc/<pid>/cmdline).
            let cmdline = format!("/proc/{}/cmdline", child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read(&cmdline).is_ok_and(|c| c.starts_with(b"sh\0-c\0read _\0")) {
                assert!(Instant::now() < deadline, "sh did not start");
                std::thread::sleep(Duration::from_millis(5));
            }
            Self(child)
        }
    }

    impl Drop for Lookalike {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_supervisor_is_found_by_any_spelling_of_its_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let dir = root.join("testnet");
        let other = root.join("other");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&dir, root.join("link")).unwrap();
        let abs = dir.to_str().unwrap();
        let cases: [(&Path, &[&str]); 8] = [
            (&root, &["testnet", "up", "--dir", "testnet"]),
            (
                &root,
                &["testnet", "up", "--validators", "4", "--dir", "./testnet"],
            ),
            (&root, &["testnet", "start", "--dir=testnet/"]),
            (&root, &["testnet", "start", "--dir", abs]),
            (&dir, &["testnet", "start", "--dir", "."]),
            (&other, &["testnet", "start", "--dir", "../link"]),
            (&root, &["testnet", "start", "--non-interactive"]),
            (&root, &["testnet", "up"]),
        ];
        for (cwd, args) in cases {
            let p = Lookalike::spawn(cwd, args);
            assert!(
                process_alive(p.0.id(), &dir),
                "{args:?} in {} not seen as the supervisor of {}",
                cwd.display(),
                dir.display()
            );
            assert!(
                !process_alive(p.0.id(), &other),
                "{args:?} in {} taken for the supervisor of {}",
                cwd.display(),
                other.display()
            );
        }
        // The same spellings from a directory where they name another testnet.
        for (cwd, args) in [
            (&other, &["testnet", "up", "--dir", "testnet"][..]),
            (&other, &["testnet", "start"][..]),
        ] {
            let p = Lookalike::spawn(cwd, args);
            assert!(
                !process_alive(p.0.id(), &dir),
                "{args:?} in {} taken for the supervisor of {}",
                cwd.display(),
                dir.display()
            );
        }
    }
}
