//! DescribeLogDirs (key 35), versions 1-4: the one data directory, with the
//! size of each partition asked for (all when `topics` is null). Sizes come
//! from the owners (bytes of all segments, including appended batches not
//! yet written).

use std::rc::Rc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::{HandlerError, RequestContext, str_bytes};
use crate::shard::Shard;
use crate::shard::scatter::ByOwner;
use crate::types::TopicPartition;

pub async fn handle(
    ctx: &RequestContext,
    req: DescribeLogDirsRequest,
) -> Result<DescribeLogDirsResponse, HandlerError> {
    let shard = &ctx.shard;
    let catalog = shard.catalog();
    // (topic, partitions) asked for that exist.
    let wanted: Vec<(String, Vec<i32>)> = match req.topics {
        None => catalog
            .topics
            .values()
            .map(|m| (m.name.clone(), (0..m.partitions).collect()))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .map(|t| {
                let name = t.topic.0.to_string();
                let parts = t
                    .partitions
                    .into_iter()
                    .filter(|p| catalog.has_partition(&name, *p))
                    .collect();
                (name, parts)
            })
            .filter(|(_, p): &(String, Vec<i32>)| !p.is_empty())
            .collect(),
    };
    let mut per_owner = ByOwner::new(shard.count);
    for (name, parts) in &wanted {
        for p in parts {
            let tp = TopicPartition::new(name.clone(), *p);
            per_owner.push(shard.owner_of(&tp), tp.clone(), tp);
        }
    }
    let sizes: std::collections::HashMap<TopicPartition, i64> = shard
        .scatter(per_owner, sizes_on_owner)
        .await?
        .all()
        .await?
        .into_iter()
        .collect();
    let topics = wanted
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|p| {
                    let size = sizes
                        .get(&TopicPartition::new(name.clone(), p))
                        .copied()
                        .unwrap_or(0);
                    DescribeLogDirsPartition::default()
                        .with_partition_index(p)
                        .with_partition_size(size)
                })
                .collect();
            DescribeLogDirsTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    let dir = shard
        .config
        .data_dir
        .canonicalize()
        .unwrap_or(shard.config.data_dir.clone());
    let (total, usable) = disk_space(&dir);
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(dir.display().to_string()))
        .with_topics(topics);
    if ctx.version >= 4 {
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    Ok(DescribeLogDirsResponse::default().with_results(vec![result]))
}

/// On the owner: each partition's size in bytes, 0 if it is not open.
async fn sizes_on_owner(shard: Rc<Shard>, parts: Vec<TopicPartition>) -> Vec<i64> {
    parts
        .iter()
        .map(|tp| shard.partition(tp).map_or(0, |log| log.size_bytes() as i64))
        .collect()
}

/// (total, usable) bytes of the file system holding `dir`; -1 if unknown.
fn disk_space(dir: &std::path::Path) -> (i64, i64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (-1, -1);
    };
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid
    // out-pointer for the duration of the call.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return (-1, -1);
        }
        let frsize = st.f_frsize as i64;
        (
            (st.f_blocks as i64).saturating_mul(frsize),
            (st.f_bavail as i64).saturating_mul(frsize),
        )
    }
}
