//! The controller voter list as operators write it: `ID@HOST:PORT[,ID@HOST:PORT...]`.

use std::collections::BTreeMap;

/// Why a voter list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VotersError {
    #[error("the controller voter list is empty")]
    Empty,
    #[error("controller voter {0:?} is not ID@HOST:PORT")]
    Malformed(String),
    #[error("controller voter {0:?}: the node id must be a number from 0 to {max}", max = i32::MAX)]
    BadId(String),
    #[error("controller voter {0:?}: the address must be HOST:PORT with a port from 1 to 65535")]
    BadAddress(String),
    #[error("node id {0} is listed twice among the controller voters")]
    DuplicateId(u64),
    #[error("address {0} is listed for two controller voters")]
    DuplicateAddress(String),
    #[error("node {node_id} is not among the controller voters ({voters}): give it --node-id from the list, or add it")]
    NotAVoter { node_id: u64, voters: String },
}

/// Parses `ID@HOST:PORT[,ID@HOST:PORT...]` into node id -> controller address, and checks that
/// `node_id` is one of them. Node ids are Kafka broker ids (non-negative `i32`).
pub fn parse_voters(list: &str, node_id: u64) -> Result<BTreeMap<u64, String>, VotersError> {
    let mut voters = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) = item
            .split_once('@')
            .ok_or_else(|| VotersError::Malformed(item.to_string()))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|&n| n <= i32::MAX as u64)
            .ok_or_else(|| VotersError::BadId(item.to_string()))?;
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(VotersError::BadAddress(item.to_string()));
        }
        if voters.values().any(|a| a == address) {
            return Err(VotersError::DuplicateAddress(address.to_string()));
        }
        if voters.insert(id, address.to_string()).is_some() {
            return Err(VotersError::DuplicateId(id));
        }
    }
    if voters.is_empty() {
        return Err(VotersError::Empty);
    }
    if !voters.contains_key(&node_id) {
        return Err(VotersError::NotAVoter {
            node_id,
            voters: list.to_string(),
        });
    }
    Ok(voters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_voters_is_read_with_this_node_among_them() {
        let voters = parse_voters("1@127.0.0.1:9093, 2@127.0.0.1:9193,3@[::1]:9293", 2);
        assert_eq!(
            voters,
            Ok(BTreeMap::from([
                (1, "127.0.0.1:9093".to_string()),
                (2, "127.0.0.1:9193".to_string()),
                (3, "[::1]:9293".to_string()),
            ]))
        );
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        let cases = [
            ("", VotersError::Empty),
            (
                "1=127.0.0.1:9093",
                VotersError::Malformed("1=127.0.0.1:9093".into()),
            ),
            ("x@127.0.0.1:9093", VotersError::BadId("x@127.0.0.1:9093".into())),
            (
                "-1@127.0.0.1:9093",
                VotersError::BadId("-1@127.0.0.1:9093".into()),
            ),
            ("1@127.0.0.1", VotersError::BadAddress("1@127.0.0.1".into())),
            ("1@127.0.0.1:0", VotersError::BadAddress("1@127.0.0.1:0".into())),
            ("1@:9093", VotersError::BadAddress("1@:9093".into())),
            ("1@a:1,1@b:2", VotersError::DuplicateId(1)),
            ("1@a:1,2@a:1", VotersError::DuplicateAddress("a:1".into())),
        ];
        for (list, expected) in cases {
            assert_eq!(parse_voters(list, 1), Err(expected), "{list:?}");
        }
        let err = parse_voters("1@a:1,2@b:2", 3).unwrap_err();
        assert!(
            err.to_string()
                .contains("node 3 is not among the controller voters"),
            "{err}"
        );
    }
}
