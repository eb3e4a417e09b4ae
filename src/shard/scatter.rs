//! "Group by owner, run on each owner, reassemble", written once.
//!
//! A request that touches partitions of several shards collects its work into a [`ByOwner`]
//! (each item with a key saying where its result goes back), hands each owner its share with
//! [`Shard::scatter`] (one `send_on` per owner, in shard order, so the request is placed once
//! it returns: `server::ordering`), then awaits the [`Gathered`] replies: all of them, with
//! their keys ([`Gathered::all`]), or the first owner to answer ([`Gathered::first`]).

use std::future::Future;
use std::rc::Rc;

use super::{Reply, Shard, ShardError};
use crate::types::ShardId;

/// Work for each shard, in the order it was pushed; `K` says where each result goes back.
pub struct ByOwner<K, W> {
    per_owner: Vec<Vec<(K, W)>>,
}

impl<K, W> ByOwner<K, W> {
    /// Empty work for a broker of `shards` shards.
    pub fn new(shards: usize) -> Self {
        Self {
            per_owner: (0..shards).map(|_| Vec::new()).collect(),
        }
    }

    /// Add `work` for shard `owner` (`Shard::owner_of` the partition it is for).
    pub fn push(&mut self, owner: ShardId, key: K, work: W) {
        self.per_owner[owner.0].push((key, work));
    }

    pub fn is_empty(&self) -> bool {
        self.per_owner.iter().all(Vec::is_empty)
    }
}

/// The replies of one scatter: per owner, the keys of its items and its reply.
pub struct Gathered<K, R> {
    replies: Vec<(Vec<K>, Reply<Vec<R>>)>,
}

impl<K, R> Gathered<K, R> {
    /// Every owner's results, each with the key it was pushed with. An owner's function
    /// returns one result per item, in item order.
    pub async fn all(self) -> Result<Vec<(K, R)>, ShardError> {
        let (keys, replies): (Vec<_>, Vec<_>) = self.replies.into_iter().unzip();
        let mut out = Vec::new();
        for (keys, results) in keys
            .into_iter()
            .zip(futures::future::join_all(replies).await)
        {
            let results = results?;
            assert_eq!(keys.len(), results.len(), "one result per item");
            out.extend(keys.into_iter().zip(results));
        }
        Ok(out)
    }

    /// Resolves when the first owner answers (at once when there was no work); the other
    /// replies are dropped, their work still runs to its end on its owner.
    pub async fn first(self) -> Result<(), ShardError> {
        if self.replies.is_empty() {
            return Ok(());
        }
        let replies = self.replies.into_iter().map(|(_, reply)| reply);
        let (first, _, _) = futures::future::select_all(replies).await;
        first.map(drop)
    }
}

impl Shard {
    /// Hand each owner its share of `work`: `f(owner's shard, its items)` runs there (its
    /// synchronous part when it arrives, in arrival order) and returns one result per item.
    /// Returns once every share is on its way; await the [`Gathered`] for the results.
    pub async fn scatter<K, W, R, F, Fut>(
        &self,
        work: ByOwner<K, W>,
        f: F,
    ) -> Result<Gathered<K, R>, ShardError>
    where
        W: Send + 'static,
        R: Send + 'static,
        F: FnOnce(Rc<Shard>, Vec<W>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = Vec<R>> + 'static,
    {
        let mut replies = Vec::new();
        for (owner, items) in work.per_owner.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let (keys, items): (Vec<K>, Vec<W>) = items.into_iter().unzip();
            let f = f.clone();
            let reply = self.send_on(ShardId(owner), move |s| f(s, items)).await?;
            replies.push((keys, reply));
        }
        Ok(Gathered { replies })
    }
}
