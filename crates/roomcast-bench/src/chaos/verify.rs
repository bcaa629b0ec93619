//! Holding each subscriber's record against what the deployment
//! acknowledged: the promise, checked event by event.
//!
//! - **Duplicate**: an ID handed to the same subscriber twice.
//! - **Order violation**: an ID not above the one handed over before it.
//! - **ID reuse**: one ID carrying two different events (tags).
//! - **Stored twice**: one publish (tag) delivered or acknowledged under
//!   two IDs: the store ran an append twice.
//! - **Silent loss**: an acknowledged event the subscriber never got, with
//!   no `gap` covering it. A gap with `after = A` covers every event above
//!   `A` and below the next event the subscriber was handed after the gap.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::clients::{Entry, SubLog};
use super::id::EventId;

/// The verdict over every subscriber.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Verdict {
    /// Events handed to subscribers, all together.
    pub delivered: u64,
    /// Acknowledged events missing from a subscriber without a gap.
    pub silent_losses: u64,
    /// Events handed to the same subscriber more than once.
    pub duplicates: u64,
    /// Events handed over below or at the ID before them.
    pub order_violations: u64,
    /// IDs seen carrying two different events.
    pub id_reuse: u64,
    /// Publishes seen under two different IDs (stored twice).
    pub stored_twice: u64,
    /// Events delivered that no publisher ever sent.
    pub phantoms: u64,
    /// Acknowledged events a subscriber missed and was told of (a gap).
    pub reported_missing: u64,
    /// `gap` frames received.
    pub gaps: u64,
    /// Subscribers that did not reach their room's fence in time.
    pub stuck: u64,
    /// A few concrete findings, for the report.
    pub examples: Vec<String>,
    /// For the first subscribers with a silent loss: what they were handed
    /// around it, with their (re)connections and gaps, seconds from start.
    pub traces: Vec<Vec<String>>,
}

impl Verdict {
    /// No loss, duplicate, reordering, reuse, phantom or stuck subscriber.
    pub fn clean(&self) -> bool {
        self.silent_losses == 0
            && self.duplicates == 0
            && self.order_violations == 0
            && self.id_reuse == 0
            && self.stored_twice == 0
            && self.phantoms == 0
            && self.stuck == 0
    }

    fn note(&mut self, finding: String) {
        if self.examples.len() < 20 {
            self.examples.push(finding);
        }
    }
}

/// Checks every subscriber's log against the acknowledged events.
pub fn check(
    logs: &[SubLog],
    acked: &HashMap<String, Vec<(EventId, u64)>>,
    uncertain: &HashSet<u64>,
    started: Instant,
) -> Verdict {
    let mut v = Verdict::default();
    // One ID, one event, across every acknowledgement and delivery.
    let mut owner: HashMap<(String, EventId), u64> = HashMap::new();
    let known: HashSet<u64> = acked.values().flatten().map(|(_, t)| *t).collect();
    for (room, events) in acked {
        for (id, tag) in events {
            if let Some(other) = owner.insert((room.clone(), *id), *tag) {
                if other != *tag {
                    v.id_reuse += 1;
                    v.note(format!("{room}: id {id} acknowledged for two events"));
                }
            }
        }
    }
    for log in logs {
        if !log.finished {
            v.stuck += 1;
            v.note(format!("a subscriber of {} did not reach the fence", log.room));
        }
        let lost = check_one(
            log,
            acked.get(&log.room).map(Vec::as_slice).unwrap_or(&[]),
            &mut owner,
            &known,
            uncertain,
            &mut v,
        );
        if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
            if v.traces.len() < TRACES {
                v.traces.push(trace(log, *first, *last, started));
            }
        }
    }
    // One publish, one ID: a tag seen under two IDs was stored twice.
    let mut ids_of: HashMap<(&str, u64), Vec<EventId>> = HashMap::new();
    for ((room, id), tag) in &owner {
        ids_of.entry((room.as_str(), *tag)).or_default().push(*id);
    }
    let mut twice: Vec<String> = ids_of
        .into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|((room, tag), mut ids)| {
            ids.sort();
            format!("{room}: publish {tag} stored as {ids:?}")
        })
        .collect();
    twice.sort();
    v.stored_twice = twice.len() as u64;
    for finding in twice {
        v.note(finding);
    }
    v
}

/// Subscribers traced in a report.
const TRACES: usize = 3;
/// Entries shown either side of a silent loss.
const TRACE_MARGIN: usize = 6;

/// What `log` was handed from a little before `first` (lost) to a little
/// after `last` (lost), one line per entry.
fn trace(log: &SubLog, first: EventId, last: EventId, started: Instant) -> Vec<String> {
    let since = |at: &Instant| at.saturating_duration_since(started).as_secs_f64();
    let before = log.entries.iter().rposition(|e| matches!(e, Entry::Event(id, _) if *id < first)).unwrap_or(0);
    let after =
        log.entries.iter().position(|e| matches!(e, Entry::Event(id, _) if *id > last)).unwrap_or(log.entries.len());
    let from = before.saturating_sub(TRACE_MARGIN);
    let to = (after + TRACE_MARGIN).min(log.entries.len());
    let mut lines = vec![format!("{}: lost {first} ..= {last}", log.room)];
    lines.extend(log.entries[from..to].iter().map(|e| match e {
        Entry::Event(id, _) => format!("event {id}"),
        Entry::Gap(after, at) => format!("gap after {after} at {:.3} s", since(at)),
        Entry::Joined(node, answer, at) => format!("joined node {node} ({answer}) at {:.3} s", since(at)),
    }));
    lines
}

fn check_one(
    log: &SubLog,
    acked: &[(EventId, u64)],
    owner: &mut HashMap<(String, EventId), u64>,
    known: &HashSet<u64>,
    uncertain: &HashSet<u64>,
    v: &mut Verdict,
) -> Vec<EventId> {
    let mut lost = Vec::new();
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut previous: Option<EventId> = None;
    // Gap intervals (after, next event handed over after the gap).
    let mut covered: Vec<(EventId, Option<EventId>)> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for entry in &log.entries {
        match entry {
            Entry::Gap(after, _) => {
                v.gaps += 1;
                covered.push((*after, None));
                open.push(covered.len() - 1);
            }
            Entry::Joined(..) => {}
            Entry::Event(id, tag) => {
                v.delivered += 1;
                for i in open.drain(..) {
                    covered[i].1 = Some(*id);
                }
                if !seen.insert(*id) {
                    v.duplicates += 1;
                    v.note(format!("{}: {id} delivered twice", log.room));
                }
                if previous.is_some_and(|p| *id <= p) {
                    v.order_violations += 1;
                    v.note(format!("{}: {id} after {}", log.room, previous.unwrap_or_default()));
                }
                previous = Some(previous.map_or(*id, |p| p.max(*id)));
                match tag {
                    Some(t) if known.contains(t) || uncertain.contains(t) => {
                        let first = *owner.entry((log.room.clone(), *id)).or_insert(*t);
                        if first != *t {
                            v.id_reuse += 1;
                            v.note(format!("{}: id {id} carried two events", log.room));
                        }
                    }
                    _ => {
                        v.phantoms += 1;
                        v.note(format!("{}: {id} was never published", log.room));
                    }
                }
            }
        }
    }
    for (id, _) in acked {
        if seen.contains(id) {
            continue;
        }
        if covered.iter().any(|(after, next)| after < id && next.is_none_or(|n| *id < n)) {
            v.reported_missing += 1;
        } else {
            v.silent_losses += 1;
            v.note(format!("{}: acknowledged {id} never delivered, no gap", log.room));
            lost.push(*id);
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId::new(ms, 0)
    }

    fn log(entries: Vec<Entry>) -> SubLog {
        SubLog { room: "r".into(), entries, connections: 1, finished: true }
    }

    /// Events 1..=6 of room `r`, acknowledged, each tagged with its number.
    fn six_acked() -> HashMap<String, Vec<(EventId, u64)>> {
        [("r".to_owned(), (1..=6).map(|i| (id(i), i)).collect())].into_iter().collect()
    }

    /// Event `i` as handed to a subscriber.
    fn ev(i: u64) -> Entry {
        Entry::Event(id(i), Some(i))
    }

    #[test]
    fn finds_every_kind_of_broken_promise_and_accepts_a_gap() {
        let acked = six_acked();
        let none = HashSet::new();
        let clean = log(vec![ev(1), ev(2), Entry::Gap(id(2), Instant::now()), ev(5), ev(6)]);
        let v = check(&[clean], &acked, &none, Instant::now());
        assert!(v.clean(), "{v:?}");
        assert_eq!((v.reported_missing, v.gaps), (2, 1));

        let silent = log(vec![ev(1), ev(2), ev(4), ev(5), ev(6)]);
        assert_eq!(check(&[silent], &acked, &none, Instant::now()).silent_losses, 1);
        let doubled = log(vec![ev(1), ev(2), ev(3), ev(3), ev(4), ev(5), ev(6)]);
        let v = check(&[doubled], &acked, &none, Instant::now());
        assert_eq!((v.duplicates, v.order_violations), (1, 1));
        let reused = log(vec![ev(1), Entry::Event(id(2), Some(5)), ev(3), ev(4), ev(5), ev(6)]);
        assert_eq!(check(&[reused], &acked, &none, Instant::now()).id_reuse, 1);
        let phantom = log(vec![ev(1), ev(2), ev(3), ev(4), ev(5), ev(6), Entry::Event(id(7), Some(99))]);
        assert_eq!(check(&[phantom], &acked, &none, Instant::now()).phantoms, 1);
        let twice = log(vec![ev(1), ev(2), ev(3), ev(4), ev(5), ev(6), Entry::Event(id(7), Some(3))]);
        let v = check(&[twice], &acked, &none, Instant::now());
        assert_eq!((v.stored_twice, v.phantoms, v.id_reuse), (1, 0, 0), "{v:?}");
        assert!(!v.clean());
        let unfinished = SubLog { finished: false, ..log(vec![ev(1)]) };
        assert!(!check(&[unfinished], &acked, &none, Instant::now()).clean());
    }

    #[test]
    fn a_silent_loss_is_traced_with_the_joins_and_gaps_around_it() {
        let acked = six_acked();
        let started = Instant::now();
        let joined = |node| Entry::Joined(node, "\"0-0\" resumed".into(), started);
        let holed = log(vec![joined(0), ev(1), joined(1), ev(4), ev(5), ev(6)]);
        let v = check(&[holed], &acked, &HashSet::new(), started);
        assert_eq!(v.silent_losses, 2);
        let trace = v.traces.first().expect("a trace of the subscriber");
        assert_eq!(trace[0], format!("r: lost {} ..= {}", id(2), id(3)));
        assert!(trace.iter().any(|l| l.starts_with("joined node 1")), "{trace:?}");
        assert!(trace.contains(&format!("event {}", id(4))), "{trace:?}");
        let clean = check(&[log(vec![ev(1), ev(2), ev(3), ev(4), ev(5), ev(6)])], &acked, &HashSet::new(), started);
        assert!(clean.traces.is_empty());
    }
}
