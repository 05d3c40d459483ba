//! The processes the benchmark starts (gateway, upstreams), each owned by a guard that stops it by
//! PID on drop — also on error and panic — plus the /proc readers for CPU time and RSS.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A spawned child, stopped (SIGTERM, then SIGKILL) when dropped. Processes it spawned itself
/// and that are still alive after it exits are killed too (the gateway's stdio connectors).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdin closed and stderr to `log`; stdout is piped for `first_line`.
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let err = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Wrap a child spawned elsewhere (with its own pipes), so that it is still stopped on drop.
    pub fn adopt(name: &str, child: Child, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stdout line, which must start with `prefix`; returns the rest of it. Later
    /// output is drained on a thread so that the child never blocks on a full pipe.
    pub fn first_line(&mut self, prefix: &str, wait: Duration) -> anyhow::Result<String> {
        let stdout = self
            .child
            .stdout
            .take()
            .context("stdout was already taken")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let mut sink = String::new();
            while matches!(reader.read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
        });
        let line = match rx.recv_timeout(wait) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => bail!("{}: cannot read stdout: {e}{}", self.name, self.log_tail()),
            Err(_) => bail!(
                "{} printed nothing within {wait:?}{}",
                self.name,
                self.log_tail()
            ),
        };
        match line.trim().strip_prefix(prefix) {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => bail!(
                "{}: expected a first line starting with {prefix:?}, got {line:?}{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The end of the child's stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n--- {} (last lines) ---\n{tail}", self.log.display())
        }
    }

    fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.pid();
        // Remember its children now: once it exits they are re-parented and can't be found.
        let orphans: Vec<(u32, String)> =
            children(pid).into_iter().map(|c| (c, cmdline(c))).collect();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("{} (pid {pid}) ignored SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for (c, cmd) in orphans {
            // Same PID and same command line: still our grandchild, not a reused PID.
            if cmdline(c) == cmd && !cmd.is_empty() {
                let _ = kill(Pid::from_raw(c as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A directory for configs and logs, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("manifold-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Clock ticks per second for /proc/PID/stat times (`getconf CLK_TCK`, almost always 100).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}

/// The fields of /proc/PID/stat after the command name (field 3, `state`, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU time of `pid` (all its threads, not its children), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime is field 14 and stime field 15 of proc(5).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of one process: precise per-thread figures, and the coarse total that also keeps
/// the time of threads that have exited.
#[derive(Clone, Default)]
pub struct ProcCpu {
    /// Thread id → nanoseconds on CPU (/proc/PID/task/TID/schedstat, first field).
    threads: HashMap<u32, u64>,
    ticks: u64,
}

impl ProcCpu {
    pub fn read(pid: u32) -> Option<Self> {
        let ticks = cpu_ticks(pid)?;
        let mut threads = HashMap::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
            if let Some(ns) = ns {
                threads.insert(tid, ns);
            }
        }
        Some(Self { threads, ticks })
    }

    /// Nanoseconds used between `self` and `later`: exact while no thread has exited (threads
    /// that started in between count whole), else from the clock ticks, exact to one tick.
    pub fn ns_until(&self, later: &ProcCpu, ticks_per_sec: u64) -> u64 {
        if self.threads.keys().all(|t| later.threads.contains_key(t)) {
            later
                .threads
                .iter()
                .map(|(t, ns)| ns.saturating_sub(self.threads.get(t).copied().unwrap_or(0)))
                .sum()
        } else {
            later.ticks.saturating_sub(self.ticks) * 1_000_000_000 / ticks_per_sec.max(1)
        }
    }
}

/// Resident set size in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Live processes whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            stat_fields(*p)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == pid)
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `name` next to the running benchmark binary (cargo puts every binary of a profile together).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the benchmark's own path")?;
    Ok(exe.with_file_name(name))
}

pub fn ensure_exists(path: &Path, what: &str) -> anyhow::Result<()> {
    if path.is_file() {
        return Ok(());
    }
    bail!(
        "{what} not found at {}: build it with `cargo build --release -p manifold-bench -p manifold` or pass its path",
        path.display()
    )
}
