//! The cluster a broker belongs to, from `seed_servers`, `node_id`, `rpc_listen` and
//! `advertised_rpc_listener`: the voters of the metadata group (every seed) and where each
//! one's RPC listener is. No `seed_servers`: a one-node broker, exactly as without replication.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{Config, ConfigError};

/// The cluster as this broker was started with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This broker's id (> 0, one of the seeds).
    pub node_id: i32,
    /// Every seed broker's RPC address (HOST:PORT), by id. The metadata group's voters.
    pub seeds: BTreeMap<i32, String>,
    /// Where this broker's shards listen for other brokers.
    pub rpc_listen: SocketAddr,
    /// This data directory's incarnation (`cluster::incarnation`); 0 until the broker has
    /// read it at start.
    pub incarnation: u64,
}

fn invalid(name: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { name, reason }
}

/// Parse `ID@HOST:PORT,ID@HOST:PORT,...`.
pub fn parse_seeds(s: &str) -> Result<BTreeMap<i32, String>, String> {
    let mut seeds = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| format!("`{item}` is not ID@HOST:PORT"))?;
        let id: i32 = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` in `{item}` is not a broker id"))?;
        if id <= 0 {
            return Err(format!("broker id {id} in `{item}` must be above 0"));
        }
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!("`{addr}` in `{item}` is not HOST:PORT"));
        }
        if seeds.insert(id, addr.to_string()).is_some() {
            return Err(format!("broker id {id} appears twice"));
        }
    }
    Ok(seeds)
}

impl ClusterSpec {
    /// The cluster `config` describes; None without `seed_servers`.
    pub fn from_config(config: &Config) -> Result<Option<ClusterSpec>, ConfigError> {
        if config.seed_servers.trim().is_empty() {
            if !config.rpc_listen.trim().is_empty() {
                return Err(invalid(
                    "rpc_listen",
                    "set without seed_servers (a one-node broker has no RPC listener)".into(),
                ));
            }
            return Ok(None);
        }
        let mut seeds =
            parse_seeds(&config.seed_servers).map_err(|r| invalid("seed_servers", r))?;
        if seeds.is_empty() {
            return Err(invalid("seed_servers", "lists no broker".into()));
        }
        if seeds.len() > crate::constants::CLUSTER_BROKERS_MAX {
            return Err(invalid(
                "seed_servers",
                format!(
                    "{} brokers; at most {} are supported",
                    seeds.len(),
                    crate::constants::CLUSTER_BROKERS_MAX
                ),
            ));
        }
        if !seeds.contains_key(&config.node_id) {
            return Err(invalid(
                "node_id",
                format!(
                    "{} is not among seed_servers ({}); every broker of the cluster is a seed",
                    config.node_id,
                    seeds
                        .keys()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let rpc_listen: SocketAddr = config.rpc_listen.trim().parse().map_err(|_| {
            invalid(
                "rpc_listen",
                format!(
                    "`{}` is not HOST:PORT (an IP address and a port); it is required with seed_servers",
                    config.rpc_listen
                ),
            )
        })?;
        if let Some(adv) = &config.advertised_rpc_listener {
            let own = parse_seeds(&format!("{}@{adv}", config.node_id))
                .map_err(|r| invalid("advertised_rpc_listener", r))?;
            seeds.extend(own);
        }
        Ok(Some(ClusterSpec {
            node_id: config.node_id,
            seeds,
            rpc_listen,
            incarnation: 0,
        }))
    }

    /// The metadata group's voters (every seed), as Raft ids.
    pub fn voters(&self) -> Vec<u64> {
        self.seeds.keys().map(|&id| id as u64).collect()
    }

    /// The other brokers.
    pub fn peers(&self) -> impl Iterator<Item = (i32, &str)> {
        self.seeds
            .iter()
            .filter(move |(id, _)| **id != self.node_id)
            .map(|(id, a)| (*id, a.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seeds: &str, node: i32, rpc: &str) -> Config {
        Config {
            seed_servers: seeds.into(),
            node_id: node,
            rpc_listen: rpc.into(),
            ..Config::default()
        }
    }

    #[test]
    fn seeds_parse_and_are_checked() {
        let s = parse_seeds("1@a:1, 2@127.0.0.1:9093,3@[::1]:5").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[&2], "127.0.0.1:9093");
        for bad in [
            "1@a",
            "x@a:1",
            "0@a:1",
            "-1@a:1",
            "1@a:1,1@b:2",
            "1@:1",
            "1@a:0",
            "a:1",
        ] {
            assert!(parse_seeds(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_cluster_needs_its_own_id_and_an_rpc_listener() {
        assert_eq!(ClusterSpec::from_config(&Config::default()).unwrap(), None);
        let ok = cfg("1@127.0.0.1:9101,2@127.0.0.1:9102", 2, "127.0.0.1:9102");
        let spec = ClusterSpec::from_config(&ok).unwrap().unwrap();
        assert_eq!(spec.voters(), vec![1, 2]);
        assert_eq!(
            spec.peers().collect::<Vec<_>>(),
            vec![(1, "127.0.0.1:9101")]
        );
        assert!(ClusterSpec::from_config(&cfg("1@h:1,2@h:2", 3, "127.0.0.1:1")).is_err());
        assert!(ClusterSpec::from_config(&cfg("1@h:1", 1, "")).is_err());
        assert!(ClusterSpec::from_config(&cfg("", 0, "127.0.0.1:1")).is_err());
        let mut adv = ok.clone();
        adv.advertised_rpc_listener = Some("10.0.0.2:9102".into());
        let spec = ClusterSpec::from_config(&adv).unwrap().unwrap();
        assert_eq!(spec.seeds[&2], "10.0.0.2:9102");
    }
}
