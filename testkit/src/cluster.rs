//! Several nodes in one process over shared ports: the demo and the simulation tests start,
//! kill, stop and restart nodes through it, and it keeps the timeline of what happened.

use crate::timeline::{Action, Timeline};
use coordinator::EventSink;
use proto::{ShardId, WorkerId};
use std::collections::BTreeMap;
use worker::{Node, NodeConfig, NodePorts};

pub struct LocalCluster {
    ports: NodePorts,
    template: NodeConfig,
    nodes: BTreeMap<WorkerId, Node>,
    events: EventSink,
    pub timeline: Timeline,
    collector: tokio::task::JoinHandle<()>,
    started: u32,
}

impl LocalCluster {
    /// `template` gives every node's settings; its `me` is replaced per node.
    pub fn new(ports: NodePorts, template: NodeConfig) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let timeline = Timeline::default();
        let sink = timeline.clone();
        let collector = tokio::spawn(async move {
            while let Some((at, event)) = rx.recv().await {
                sink.record(at, event);
            }
        });
        Self { ports, template, nodes: BTreeMap::new(), events: EventSink::new(tx), timeline, collector, started: 0 }
    }

    /// Starts a node; without an id it gets a fresh one (`node-N`).
    pub async fn start_node(&mut self, id: Option<WorkerId>) -> Result<WorkerId, worker::node::StartError> {
        let id = id.unwrap_or_else(|| WorkerId::new(format!("node-{}", self.started)));
        self.started += 1;
        let config = NodeConfig { me: id.clone(), ..self.template.clone() };
        let node = Node::start(config, self.ports.clone(), self.events.clone()).await?;
        self.nodes.insert(id.clone(), node);
        Ok(id)
    }

    /// A crash: the node writes nothing more.
    pub async fn kill(&mut self, id: &WorkerId) {
        if let Some(node) = self.nodes.remove(id) {
            let shards = node.owned().await;
            self.timeline.act(Action::Kill { node: id.clone(), shards });
            node.kill().await;
        }
    }

    /// A graceful stop (SIGTERM).
    pub async fn stop(&mut self, id: &WorkerId) {
        if let Some(node) = self.nodes.remove(id) {
            let shards = node.owned().await;
            self.timeline.act(Action::Stop { node: id.clone(), shards });
            node.shutdown().await;
        }
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<WorkerId> = self.nodes.keys().cloned().collect();
        for id in ids {
            self.stop(&id).await;
        }
    }

    pub fn live(&self) -> Vec<WorkerId> {
        self.nodes.keys().cloned().collect()
    }

    pub fn node(&self, id: &WorkerId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Which shards each live node consumes now.
    pub async fn assignment(&self) -> BTreeMap<WorkerId, Vec<ShardId>> {
        let mut out = BTreeMap::new();
        for (id, node) in &self.nodes {
            out.insert(id.clone(), node.owned().await);
        }
        out
    }

    /// The sum of a counter over the live nodes.
    pub fn sum(&self, counter: impl Fn(&worker::NodeMetrics) -> u64) -> u64 {
        self.nodes.values().map(|n| counter(&n.metrics)).sum()
    }

    /// Whether a node stopped on its own (a fatal failure).
    pub fn crashed(&self) -> Vec<WorkerId> {
        self.nodes.iter().filter(|(_, n)| n.is_finished()).map(|(id, _)| id.clone()).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.collector.abort();
    }
}
