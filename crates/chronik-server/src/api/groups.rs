//! The classic group protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups, DescribeGroups,
//! DeleteGroups. The state machine is in `groups.rs` at the crate root; this file maps it to messages.
//!
//! JoinGroup is advertised up to v4 (KIP-394 member ids, no static membership): clients then never send
//! `group.instance.id`.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use kafka_protocol::{
    error::ResponseError,
    messages::{
        delete_groups_response::DeletableGroupResult,
        describe_groups_response::{DescribedGroup, DescribedGroupMember},
        join_group_response::JoinGroupResponseMember,
        leave_group_response::MemberResponse,
        list_groups_response::ListedGroup,
        ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
        GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
        LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
    },
    protocol::StrBytes,
};

use super::ApiError;
use crate::{
    broker::Broker,
    groups::{JoinRequest, Reply},
    telemetry,
};

fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}

fn s(v: String) -> StrBytes {
    StrBytes::from_string(v)
}

async fn settle<T: Default>(reply: Reply<T>) -> T {
    match reply {
        Reply::Now(t) => t,
        // A dropped sender (member removed meanwhile) answers with the default, i.e. an empty result;
        // callers map that to an error below.
        Reply::Wait(rx) => rx.await.unwrap_or_default(),
    }
}

pub async fn join(
    broker: &Arc<Broker>,
    r: JoinGroupRequest,
    version: i16,
) -> Result<JoinGroupResponse, ApiError> {
    let session = Duration::from_millis(r.session_timeout_ms.max(0) as u64);
    // v0 has no rebalance timeout: it is the session timeout.
    let rebalance = if version >= 1 {
        Duration::from_millis(r.rebalance_timeout_ms.max(0) as u64)
    } else {
        session
    };
    let request = JoinRequest {
        group: r.group_id.0.to_string(),
        member_id: r.member_id.to_string(),
        require_known_member_id: version >= 4,
        client_id: String::new(),
        client_host: String::new(),
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
    };
    if let Err(e) = broker.coordinator_of(&request.group) {
        telemetry::api_error(ApiKey::JoinGroup, e.code());
        return Ok(JoinGroupResponse::default()
            .with_error_code(e.code())
            .with_generation_id(-1)
            .with_protocol_name(Some(s(String::new())))
            .with_member_id(s(request.member_id)));
    }
    let result = settle(broker.groups.join(request)).await;
    let error = match (result.error, result.generation) {
        (None, g) if g < 1 => Some(ResponseError::UnknownMemberId),
        (e, _) => e,
    };
    telemetry::api_error(ApiKey::JoinGroup, code(error));
    Ok(JoinGroupResponse::default()
        .with_error_code(code(error))
        .with_generation_id(result.generation)
        .with_protocol_type(result.protocol_type.map(s))
        .with_protocol_name(Some(s(result.protocol.unwrap_or_default())))
        .with_leader(s(result.leader))
        .with_member_id(s(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(id))
                        .with_metadata(metadata)
                })
                .collect(),
        ))
}

pub async fn sync(broker: &Arc<Broker>, r: SyncGroupRequest) -> Result<SyncGroupResponse, ApiError> {
    let assignments: Vec<(String, Bytes)> = r
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    if let Err(e) = broker.coordinator_of(&r.group_id.0) {
        telemetry::api_error(ApiKey::SyncGroup, e.code());
        return Ok(SyncGroupResponse::default().with_error_code(e.code()));
    }
    let reply = broker
        .groups
        .sync(&r.group_id.0, r.generation_id, &r.member_id, assignments);
    let result = settle(reply).await;
    let error = match (result.error, &result.protocol) {
        (None, None) => Some(ResponseError::RebalanceInProgress),
        (e, _) => e,
    };
    telemetry::api_error(ApiKey::SyncGroup, code(error));
    Ok(SyncGroupResponse::default()
        .with_error_code(code(error))
        .with_protocol_type(result.protocol_type.map(s))
        .with_protocol_name(result.protocol.map(s))
        .with_assignment(result.assignment))
}

pub fn heartbeat(broker: &Broker, r: HeartbeatRequest) -> HeartbeatResponse {
    let error = match broker.coordinator_of(&r.group_id.0) {
        Err(e) => e.code(),
        Ok(_) => code(
            broker
                .groups
                .heartbeat(&r.group_id.0, r.generation_id, &r.member_id),
        ),
    };
    telemetry::api_error(ApiKey::Heartbeat, error);
    HeartbeatResponse::default().with_error_code(error)
}

pub fn leave(broker: &Broker, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    if let Err(e) = broker.coordinator_of(&r.group_id.0) {
        return LeaveGroupResponse::default().with_error_code(e.code());
    }
    if version < 3 {
        let result = broker.groups.leave(&r.group_id.0, &[r.member_id.to_string()]);
        return LeaveGroupResponse::default().with_error_code(code(result.into_iter().next().flatten()));
    }
    let ids: Vec<String> = r.members.iter().map(|m| m.member_id.to_string()).collect();
    let results = broker.groups.leave(&r.group_id.0, &ids);
    let members = r
        .members
        .into_iter()
        .zip(results)
        .map(|(m, e)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_error_code(code(e))
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub fn list(broker: &Broker, _r: ListGroupsRequest) -> ListGroupsResponse {
    // Groups are held only by their coordinator; a group whose partition left this broker is forgotten
    // when the change is applied, and one in flight is filtered here.
    let groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|g| broker.coordinator_of(&g.group_id).is_ok())
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(s(g.group_id)))
                .with_protocol_type(s(g.protocol_type))
                .with_group_state(StrBytes::from_static_str(g.state.name()))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe(broker: &Broker, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = r
        .groups
        .into_iter()
        .map(|id| {
            let described = DescribedGroup::default().with_group_id(id.clone());
            if let Err(e) = broker.coordinator_of(&id.0) {
                return described.with_error_code(e.code());
            }
            match broker.groups.describe(&id.0) {
                None => described.with_group_state(StrBytes::from_static_str("Dead")),
                Some(d) => described
                    .with_group_state(StrBytes::from_static_str(d.state.name()))
                    .with_protocol_type(s(d.protocol_type))
                    .with_protocol_data(s(d.protocol))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn delete(broker: &Arc<Broker>, r: DeleteGroupsRequest) -> Result<DeleteGroupsResponse, ApiError> {
    let mut results = Vec::with_capacity(r.groups_names.len());
    for id in r.groups_names {
        let store = broker.coordinator_of(&id.0);
        let error = match store.and_then(|offsets| broker.groups.delete(&id.0).map(|()| offsets)) {
            Err(e) => Some(e),
            Ok(offsets) => {
                match offsets.queue_delete_group(&id.0).wait().await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(group = %id.0, error = %e, "deleting group offsets failed");
                        // As Kafka's coordinator answers a failed store: a retriable code that makes
                        // clients look the coordinator up again.
                        Some(ResponseError::NotCoordinator)
                    }
                }
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code(error)),
        );
    }
    Ok(DeleteGroupsResponse::default().with_results(results))
}
