//! Helpers for the multi-process tests: free ports, server processes that never outlive a
//! test, bounded waits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seedkv_proto::{Client, ClientConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_seedkv");

/// Reserves a free loopback port (bind to port 0, then release it for the server).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// `n` free loopback addresses.
pub fn free_addrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect()
}

/// The `--initial-cluster` value naming `addrs` as nodes 1, 2, ...
pub fn initial_cluster(addrs: &[String]) -> String {
    let members: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect();
    members.join(",")
}

/// Server processes, SIGKILLed on drop so that a failing test leaves nothing behind.
pub struct Servers {
    pub children: BTreeMap<u64, Child>,
    pub dir: PathBuf,
}

impl Servers {
    /// No server yet; their data directories and logs go under `dir`.
    pub fn new(dir: &std::path::Path) -> Servers {
        Servers {
            children: BTreeMap::new(),
            dir: dir.to_path_buf(),
        }
    }

    pub fn start(&mut self, id: u64, addr: &str, extra: &[String]) {
        let log = std::fs::File::create(self.dir.join(format!("node{id}.log"))).expect("log file");
        let child = Command::new(BIN)
            .arg("server")
            .args(["--node-id", &id.to_string(), "--listen", addr])
            .arg("--data-dir")
            .arg(self.dir.join(format!("data{id}")))
            .args(["--log-level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start seedkv server");
        self.children.insert(id, child);
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then require a clean exit (status 0) within 5 s.
    pub fn stop(&mut self, id: u64) {
        let Some(mut child) = self.children.remove(&id) else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                assert!(exit.success(), "node {id} exited with {exit} after SIGTERM");
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {id} did not stop within 5 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client_for(endpoints: &[String]) -> Client {
    let mut config = ClientConfig::new(endpoints.to_vec());
    config.request_timeout_ms = 1_000;
    Client::new(config)
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of the meta group among `addrs`.
pub async fn leader(client: &Client, addrs: &[String]) -> Option<(u64, String)> {
    group_leader(client, addrs, 0).await
}

/// The leader of Raft group `group` among `addrs`.
pub async fn group_leader(client: &Client, addrs: &[String], group: u32) -> Option<(u64, String)> {
    for addr in addrs {
        if let Ok(status) = client.group_status(addr, group, false).await {
            if status.role == "leader" {
                return Some((status.node_id, addr.clone()));
            }
        }
    }
    None
}

/// True once the node at `addr` has applied, in every group it hosts, its leader's whole log
/// and holds the same state.
pub async fn caught_up(client: &Client, addrs: &[String], addr: &str) -> bool {
    let Ok(status) = client.status(addr).await else {
        return false;
    };
    for group in status.hosted_groups {
        let Some((_, leader_addr)) = group_leader(client, addrs, group).await else {
            return false;
        };
        let (Ok(lead), Ok(node)) = (
            client.group_status(&leader_addr, group, true).await,
            client.group_status(addr, group, true).await,
        ) else {
            return false;
        };
        if node.applied_index < lead.last_log_index || node.state_digest != lead.state_digest {
            return false;
        }
    }
    true
}

pub fn cli(endpoints: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--endpoints", endpoints])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run seedkv client")
}
