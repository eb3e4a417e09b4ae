//! Cluster-wide metadata: the topic catalog.
pub mod catalog;
