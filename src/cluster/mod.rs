//! Cluster-wide metadata: the topic catalog and the producer id allocator.
pub mod catalog;
pub mod producer_ids;
