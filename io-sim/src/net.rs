//! Network faults over madsim's simulated network.
//!
//! Nodes are named by their index in the cluster (0-based); the controller remembers which
//! links it cut so that `heal` restores exactly the healthy network.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::task::NodeId;

/// Cuts and restores links between the simulated nodes it was given.
pub struct NetFaults {
    net: Arc<NetSim>,
    nodes: Vec<NodeId>,
    /// Directed links currently cut, by node index.
    cut: BTreeSet<(usize, usize)>,
    default_latency: Range<Duration>,
}

impl NetFaults {
    /// A controller over `nodes` (madsim node ids, in cluster order).
    pub fn new(nodes: Vec<NodeId>) -> NetFaults {
        let net = NetSim::current();
        let mut default_latency = Duration::ZERO..Duration::ZERO;
        net.update_config(|config| default_latency = config.send_latency.clone());
        NetFaults {
            net,
            nodes,
            cut: BTreeSet::new(),
            default_latency,
        }
    }

    /// Number of nodes under control.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node is under control.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Drops every message from `from` to `to` (one way).
    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        if from == to || from >= self.nodes.len() || to >= self.nodes.len() {
            return;
        }
        self.net.clog_link(self.nodes[from], self.nodes[to]);
        self.cut.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Splits the nodes into `side` and the rest: no message crosses.
    pub fn partition(&mut self, side: &[usize]) {
        for &a in side {
            for b in 0..self.nodes.len() {
                if !side.contains(&b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&mut self, node: usize) {
        self.partition(&[node]);
    }

    /// Drops each message with probability `rate` (0.0 to 1.0).
    pub fn set_packet_loss(&mut self, rate: f64) {
        self.net
            .update_config(|config| config.packet_loss_rate = rate.clamp(0.0, 1.0));
    }

    /// Sets the one-way message latency range.
    pub fn set_latency(&mut self, latency: Range<Duration>) {
        self.net
            .update_config(|config| config.send_latency = latency);
    }

    /// Restores every link, loss-free, at normal latency.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cut) {
            self.net.unclog_link(self.nodes[from], self.nodes[to]);
        }
        self.set_packet_loss(0.0);
        let latency = self.default_latency.clone();
        self.set_latency(latency);
    }

    /// Directed links currently cut.
    pub fn cut_links(&self) -> usize {
        self.cut.len()
    }
}
