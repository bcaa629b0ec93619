//! How the store lays itself out over Redis, decided once at connect: on
//! one server (or Sentinel's master) every key may meet every other in one
//! command; on a Cluster a command names keys of one slot, so rooms are
//! grouped by bucket and each bucket is its own slot, mailbox and loss
//! domain. Every question that depends on that is answered here.

use std::collections::HashMap;

use super::keys::{bucket, Keys, BUCKETS};
use super::topology::Topology;
use crate::protocol::{EventId, RoomName};

/// Single server or Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One Redis, or Sentinel's master: no slots to respect.
    Single,
    /// A Redis Cluster: one slot per multi-key command.
    Cluster,
}

impl Layout {
    /// The layout a topology calls for.
    pub fn of(topology: &Topology) -> Layout {
        match topology {
            Topology::Cluster(_) => Layout::Cluster,
            Topology::Single(_) | Topology::Sentinel { .. } => Layout::Single,
        }
    }

    /// The mailbox `room` signals to: its bucket's on a cluster, the
    /// store's one (mailbox 0) on a single Redis. The publish script and the
    /// reader both ask here, so they cannot disagree.
    pub fn mailbox(self, room: &RoomName) -> u16 {
        match self {
            Layout::Single => 0,
            Layout::Cluster => bucket(room),
        }
    }

    /// The key of mailbox `b` (see [`Layout::mailbox`]).
    pub fn mailbox_key(self, keys: &Keys, b: u16) -> String {
        match self {
            Layout::Single => keys.mailbox(),
            Layout::Cluster => keys.signals(b),
        }
    }

    /// The doorbell the append script rings for `room` (a cluster's shard
    /// channel in the room's slot); none on a single Redis, whose reader
    /// blocks on the mailbox itself.
    pub fn doorbell(self, keys: &Keys, room: &RoomName) -> Option<String> {
        match self {
            Layout::Single => None,
            Layout::Cluster => Some(keys.doorbell(bucket(room))),
        }
    }

    /// How many parts of the data can be lost, or fail over, alone: each
    /// bucket on a cluster (each lives on one master); the whole store on a
    /// single Redis, tracked by bucket 0's epoch.
    pub fn domains(self) -> usize {
        match self {
            Layout::Single => 1,
            Layout::Cluster => usize::from(BUCKETS),
        }
    }

    /// The domain `room` belongs to (see [`Layout::domains`]).
    pub fn domain(self, room: &RoomName) -> usize {
        match self {
            Layout::Single => 0,
            Layout::Cluster => usize::from(bucket(room)),
        }
    }

    /// The calls one epoch check is made of: one over every domain on a
    /// single Redis; one per domain on a cluster, each answered by the
    /// master that holds it.
    pub fn epoch_calls(self, domains: &[usize]) -> Vec<Vec<usize>> {
        match self {
            Layout::Single => vec![domains.to_vec()],
            Layout::Cluster => domains.iter().map(|d| vec![*d]).collect(),
        }
    }

    /// The reads positions are grouped into: one on a single Redis, one per
    /// bucket on a cluster (one `XREAD` names one slot).
    pub fn reads(self, positions: &[(RoomName, EventId)]) -> Vec<Vec<(RoomName, EventId)>> {
        match self {
            Layout::Single => vec![positions.to_vec()],
            Layout::Cluster => {
                let mut by_bucket: HashMap<u16, Vec<(RoomName, EventId)>> = HashMap::new();
                for (room, position) in positions {
                    by_bucket.entry(bucket(room)).or_default().push((room.clone(), *position));
                }
                by_bucket.into_values().collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_redis_is_one_mailbox_and_one_domain_a_cluster_one_per_bucket() {
        let keys = Keys::new("rc");
        let rooms: Vec<RoomName> = (0..50).map(|i| RoomName::parse(&format!("r{i}")).unwrap()).collect();
        let positions: Vec<(RoomName, EventId)> = rooms.iter().map(|r| (r.clone(), EventId::ZERO)).collect();
        let single = Layout::of(&Topology::Single("redis://x".into()));
        assert_eq!(single, Layout::Single);
        assert!(rooms.iter().all(|r| single.mailbox(r) == 0 && single.domain(r) == 0));
        assert_eq!(single.mailbox_key(&keys, 0), keys.mailbox());
        assert_eq!(single.doorbell(&keys, &rooms[0]), None);
        assert_eq!((single.domains(), single.epoch_calls(&[0]).len(), single.reads(&positions).len()), (1, 1, 1));

        let cluster = Layout::of(&Topology::Cluster(vec!["redis://x".into()]));
        let b = bucket(&rooms[0]);
        assert_eq!((cluster.mailbox(&rooms[0]), cluster.domain(&rooms[0])), (b, usize::from(b)));
        assert_eq!(cluster.mailbox_key(&keys, b), keys.signals(b));
        assert_eq!(cluster.doorbell(&keys, &rooms[0]), Some(keys.doorbell(b)));
        assert_eq!(cluster.domains(), usize::from(BUCKETS));
        assert_eq!(cluster.epoch_calls(&[3, 4]), vec![vec![3], vec![4]]);
        let reads = cluster.reads(&positions);
        assert!(reads.iter().all(|group| group.iter().all(|(r, _)| bucket(r) == bucket(&group[0].0))));
        assert_eq!(reads.iter().map(Vec::len).sum::<usize>(), 50);
    }
}
