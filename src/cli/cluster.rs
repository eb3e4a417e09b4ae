//! `sluice cluster status`: the brokers (reachable or not), the partitions each leads and
//! holds, and the under-replicated and offline partitions, from Metadata (the bootstrap
//! broker's applied copy of the cluster metadata) and a connection attempt to every broker.

use std::collections::BTreeMap;
use std::io::Write;

use super::client::{Cluster, Connection};
use super::table::{Table, join};
use super::{CliError, ConnectArgs};

#[derive(clap::Args, Debug)]
pub struct ClusterCommand {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterAction {
    /// Brokers and their state, partitions led and held, under-replicated and offline
    /// partitions.
    Status,
}

/// How many problem partitions are listed one per line.
const LISTED_MAX: usize = 50;

pub fn run(command: &ClusterCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let mut cluster = Cluster::connect(&command.connect.bootstrap_server)?;
    let text = match command.action {
        ClusterAction::Status => status(&mut cluster)?,
    };
    out.write_all(text.as_bytes())
        .map_err(|source| CliError::Io {
            context: "writing to stdout".into(),
            source,
        })
}

/// A partition that is not fully replicated: name, state, leader, replicas, ISR.
struct Problem {
    partition: String,
    state: &'static str,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

#[derive(Default)]
struct BrokerCounts {
    leads: usize,
    replicas: usize,
}

fn status(cluster: &mut Cluster) -> Result<String, CliError> {
    let metadata = cluster.metadata(None)?;
    let mut counts: BTreeMap<i32, BrokerCounts> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, BrokerCounts::default()))
        .collect();
    let mut total = 0;
    let mut problems: Vec<Problem> = Vec::new();
    let (mut under, mut offline) = (0, 0);
    for t in &metadata.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        for p in &t.partitions {
            total += 1;
            let leader = p.leader_id.0;
            let replicas: Vec<i32> = p.replica_nodes.iter().map(|b| b.0).collect();
            let isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
            if let Some(c) = counts.get_mut(&leader) {
                c.leads += 1;
            }
            for r in &replicas {
                if let Some(c) = counts.get_mut(r) {
                    c.replicas += 1;
                }
            }
            let what = if leader < 0 {
                offline += 1;
                Some("offline")
            } else if isr.len() < replicas.len() {
                under += 1;
                Some("under-replicated")
            } else {
                None
            };
            if let Some(state) = what {
                problems.push(Problem {
                    partition: format!("{name}-{}", p.partition_index),
                    state,
                    leader,
                    replicas,
                    isr,
                });
            }
        }
    }
    let mut text = format!(
        "Cluster: {}  Controller: {}  Brokers: {}\n\n",
        metadata
            .cluster_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        metadata.controller_id.0,
        metadata.brokers.len()
    );
    let mut table = Table::new(&["BROKER", "ADDRESS", "STATE", "LEADS", "REPLICAS"]);
    for node in cluster.nodes() {
        let address = node.address();
        let state = match Connection::connect(&address) {
            Ok(_) => "up".to_string(),
            Err(e) => format!("unreachable ({e})"),
        };
        let c = counts.get(&node.id);
        table.row(vec![
            node.id.to_string(),
            address,
            state,
            c.map_or(0, |c| c.leads).to_string(),
            c.map_or(0, |c| c.replicas).to_string(),
        ]);
    }
    text.push_str(&table.render());
    text.push_str(&format!(
        "\nPartitions: {total}  under-replicated: {under}  offline: {offline}\n"
    ));
    if !problems.is_empty() {
        let mut table = Table::new(&["PARTITION", "STATE", "LEADER", "REPLICAS", "ISR"]);
        for p in problems.iter().take(LISTED_MAX) {
            table.row(vec![
                p.partition.clone(),
                p.state.to_string(),
                p.leader.to_string(),
                join(&p.replicas),
                join(&p.isr),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
        if problems.len() > LISTED_MAX {
            text.push_str(&format!("... and {} more\n", problems.len() - LISTED_MAX));
        }
    }
    Ok(text)
}
