//! OffsetFetch: what a group has committed (offset -1 where nothing is). Versions before 8 ask for one
//! group; version 8 for several. A null topic list means every partition the group committed.

use kafka_protocol::{
    error::ResponseError,
    messages::{
        offset_fetch_response::{
            OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
            OffsetFetchResponseTopic, OffsetFetchResponseTopics,
        },
        GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
    },
    protocol::StrBytes,
};

use crate::{broker::Broker, offsets::Committed};

/// (topic, [(partition, committed)]) for the topics asked, or all the group committed.
type Answer = Vec<(String, Vec<(i32, Option<Committed>)>)>;

/// What the group committed, or NOT_COORDINATOR (and the like) if this broker does not coordinate it.
fn lookup(
    broker: &Broker,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Answer, ResponseError> {
    let offsets = broker.coordinator_of(group)?;
    Ok(match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(t, parts)| {
                let found = parts
                    .into_iter()
                    .map(|p| (p, offsets.get(group, &t, p)))
                    .collect();
                (t, found)
            })
            .collect(),
        None => {
            let mut out: Answer = Vec::new();
            for (t, p, c) in offsets.all(group) {
                match out.last_mut() {
                    Some((last, parts)) if *last == t => parts.push((p, Some(c))),
                    _ => out.push((t, vec![(p, Some(c))])),
                }
            }
            out
        }
    })
}

fn metadata(c: &Option<Committed>) -> Option<StrBytes> {
    Some(StrBytes::from_string(
        c.as_ref().and_then(|c| c.metadata.clone()).unwrap_or_default(),
    ))
}

pub fn handle(broker: &Broker, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let asked = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let (topics, error) = match lookup(broker, &g.group_id.0, asked) {
                    Ok(topics) => (topics, 0),
                    Err(e) => (Vec::new(), e.code()),
                };
                let topics = topics
                    .into_iter()
                    .map(|(t, parts)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, c)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                                    .with_committed_leader_epoch(c.as_ref().map_or(-1, |c| c.leader_epoch))
                                    .with_metadata(metadata(&c))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(GroupId(g.group_id.0))
                    .with_error_code(error)
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let asked = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let (answer, error) = match lookup(broker, &request.group_id.0, asked.clone()) {
        Ok(answer) => (answer, 0),
        // v1 has no group-level error: each partition asked carries it.
        Err(e) if version < 2 => {
            let parts = asked.unwrap_or_default();
            let each = parts
                .into_iter()
                .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()));
            (each.collect(), e.code())
        }
        Err(e) => (Vec::new(), e.code()),
    };
    let partition_error = if version < 2 { error } else { 0 };
    let topics = answer
        .into_iter()
        .map(|(t, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(p, c)| {
                    let r = OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(partition_error)
                        .with_committed_offset(c.as_ref().map_or(-1, |c| c.offset))
                        .with_metadata(metadata(&c));
                    // The leader epoch field exists from v5.
                    if version >= 5 {
                        r.with_committed_leader_epoch(c.as_ref().map_or(-1, |c| c.leader_epoch))
                    } else {
                        r
                    }
                })
                .collect();
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(t)))
                .with_partitions(partitions)
        })
        .collect();
    let response = OffsetFetchResponse::default().with_topics(topics);
    if version >= 2 {
        response.with_error_code(error)
    } else {
        response
    }
}
