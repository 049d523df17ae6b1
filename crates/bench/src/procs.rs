//! Processes under test, on loopback ephemeral ports, stopped on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    /// Addresses it announced (in the order asked for).
    pub addrs: Vec<SocketAddr>,
}

impl Proc {
    /// Spawns `cmd` and waits for lines `PREFIX addr` for every prefix on its stdout.
    pub fn spawn(cmd: &mut Command, prefixes: &[&str]) -> anyhow::Result<Proc> {
        cmd.stderr(Stdio::null());
        Self::spawn_inner(cmd, prefixes)
    }

    fn spawn_inner(cmd: &mut Command, prefixes: &[&str]) -> anyhow::Result<Proc> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = vec![None; prefixes.len()];
        let deadline = Instant::now() + Duration::from_secs(30);
        while addrs.iter().any(Option::is_none) {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(_) => {
                    // Never leave a half-started process behind.
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{cmd:?} did not announce {prefixes:?}");
                }
            };
            let mut parts = line.split_whitespace();
            if let (Some(p), Some(a)) = (parts.next(), parts.next()) {
                if let (Some(i), Ok(a)) = (prefixes.iter().position(|x| *x == p), a.parse()) {
                    addrs[i] = Some(a);
                }
            }
        }
        Ok(Proc {
            child,
            addrs: addrs.into_iter().map(Option::unwrap).collect(),
        })
    }

    /// Like [`Proc::spawn`], with stderr written to `log`; when the process exits before
    /// announcing, the error carries the log's last lines (why it refused to start).
    pub fn spawn_logged(cmd: &mut Command, prefixes: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stderr(file);
        Self::spawn_inner(cmd, prefixes).map_err(|e| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(tail.join("\n"))
        })
    }

    /// Wraps a process that announces nothing; `addr` is where it listens.
    pub fn wrap(child: Child, addr: SocketAddr) -> Proc {
        Proc {
            child,
            addrs: vec![addr],
        }
    }
}

impl Proc {
    /// Whether the process has not exited yet (reaps it when it has).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; fine for a benchmark on an idle machine).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Finds nginx: the given path, `nginx` on PATH, or `/usr/sbin/nginx`.
pub fn find_nginx(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.exists().then(|| p.to_path_buf());
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nginx");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/sbin/nginx");
    p.exists().then_some(p)
}

/// An nginx configuration for a plain keep-alive reverse proxy to `upstream`, everything
/// under `dir`. With `access_log`, nginx writes the standard `combined` line per request to
/// `dir/access.log` through a 64 KiB buffer (its fastest logging; the router's log is batched
/// too); without, it logs nothing.
pub fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    access_log: bool,
) -> String {
    let d = dir.display();
    let access_log = if access_log {
        format!("access_log {d}/access.log combined buffer=64k flush=1s;")
    } else {
        "access_log off;".to_string()
    };
    format!(
        r#"worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    {access_log}
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream engine {{
        server {upstream};
        keepalive 512;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} reuseport backlog=4096;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}

/// CPU time (user + system) used so far by `pid` and all its descendants, in seconds, from
/// `/proc` (Linux). `None` when unreadable.
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    fn ticks(pid: u32, depth: usize) -> Option<u64> {
        let mut total = 0u64;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut children = Vec::new();
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the parenthesised command: state is field 3; utime 14, stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            total += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                children.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        if depth < 4 {
            for c in children {
                total += ticks(c, depth + 1).unwrap_or(0);
            }
        }
        Some(total)
    }
    // Linux reports these in USER_HZ, which is 100 on every mainstream architecture.
    ticks(pid, 0).map(|t| t as f64 / 100.0)
}

impl Proc {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
