//! `leakbloom nodes`: the operators' view of the cluster's nodes (`leakbloom.v1.Nodes`),
//! through a router or any node.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use leakbloom_proto::v1::nodes_client::NodesClient;
use leakbloom_proto::v1::{DecommissionNodeRequest, ListNodesRequest, NodeInfo, NodeState};
use tonic::transport::Channel;

use crate::DEFAULT_ADDR;

/// How often `decommission --wait` looks again.
const WAIT_POLL: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct NodesArgs {
    /// Address of a leakbloom router or node (client port).
    #[arg(long, global = true, env = "LEAKBLOOM_ADDR", default_value = DEFAULT_ADDR)]
    addr: String,
    #[command(subcommand)]
    command: NodesCommand,
}

#[derive(clap::Subcommand, Debug)]
enum NodesCommand {
    /// One line per node: id, address, state, replicas, leaders, bytes, lag.
    List {
        /// A JSON array of objects instead (id, address, peer_address, state, replicas,
        /// leaders, bytes, lag, reachable).
        #[arg(long)]
        json: bool,
    },
    /// Move every replica and leadership off a node; when done it is decommissioned and can
    /// be stopped and deleted.
    Decommission {
        /// The node's id.
        id: u64,
        /// Wait until the node is decommissioned, printing progress.
        #[arg(long)]
        wait: bool,
        /// Decommission even if fewer active nodes than the replication would remain.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: NodesArgs) -> Result<()> {
    let mut client = connect(&args.addr).await?;
    match args.command {
        NodesCommand::List { json } => {
            let nodes = list(&mut client).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&to_json(&nodes))?);
            } else {
                print!("{}", table(&nodes));
            }
        }
        NodesCommand::Decommission { id, wait, force } => {
            let info = client
                .decommission_node(DecommissionNodeRequest { node: id, force })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner();
            println!("{}", line(&info));
            if wait {
                wait_decommissioned(&mut client, id).await?;
            }
        }
    }
    Ok(())
}

async fn connect(addr: &str) -> Result<NodesClient<Channel>> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .with_context(|| format!("--addr {addr:?} is not HOST:PORT"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(NodesClient::new(channel))
}

async fn list(client: &mut NodesClient<Channel>) -> Result<Vec<NodeInfo>> {
    Ok(client
        .list_nodes(ListNodesRequest {})
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner()
        .nodes)
}

async fn wait_decommissioned(client: &mut NodesClient<Channel>, id: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        let nodes = list(client).await?;
        let Some(node) = nodes.iter().find(|n| n.id == id) else {
            bail!("node {id} is no longer listed");
        };
        if node.state() == NodeState::Decommissioned {
            println!(
                "node {id} is decommissioned after {:.0?}: it can be stopped and deleted",
                started.elapsed()
            );
            return Ok(());
        }
        eprintln!("{}", line(node));
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// A state as people read it: `active`, `decommissioning`, ...
fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Unspecified => "unknown",
        NodeState::Joining => "joining",
        NodeState::Active => "active",
        NodeState::Decommissioning => "decommissioning",
        NodeState::Decommissioned => "decommissioned",
        NodeState::Dead => "dead",
    }
}

fn line(node: &NodeInfo) -> String {
    format!(
        "node {} {} replicas={} leaders={}",
        node.id,
        state_name(node.state()),
        node.replicas,
        node.leaders
    )
}

/// The nodes as an aligned table with a header.
fn table(nodes: &[NodeInfo]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "ADDRESS".into(),
        "STATE".into(),
        "REPLICAS".into(),
        "LEADERS".into(),
        "BYTES".into(),
        "LAG".into(),
    ]];
    for node in nodes {
        let unreachable = |value: u64| {
            if node.reachable {
                value.to_string()
            } else {
                "-".to_string()
            }
        };
        rows.push([
            node.id.to_string(),
            node.address.clone(),
            state_name(node.state()).to_string(),
            node.replicas.to_string(),
            node.leaders.to_string(),
            unreachable(node.bytes),
            unreachable(node.lag),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn to_json(nodes: &[NodeInfo]) -> serde_json::Value {
    nodes
        .iter()
        .map(|node| {
            serde_json::json!({
                "id": node.id,
                "address": node.address,
                "peer_address": node.peer_address,
                "state": state_name(node.state()),
                "replicas": node.replicas,
                "leaders": node.leaders,
                "bytes": node.bytes,
                "lag": node.lag,
                "reachable": node.reachable,
            })
        })
        .collect()
}
