//! The simulator's event queue: events ordered by virtual time, ties broken by insertion
//! order, so a run is a pure function of its seed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

struct Scheduled<K> {
    at: u64,
    seq: u64,
    kind: K,
}

impl<K> PartialEq for Scheduled<K> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<K> Eq for Scheduled<K> {}
impl<K> PartialOrd for Scheduled<K> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Scheduled<K> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Events of kind `K` at virtual times in nanoseconds.
pub(crate) struct EventQueue<K> {
    heap: BinaryHeap<Reverse<Scheduled<K>>>,
    seq: u64,
}

impl<K> EventQueue<K> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Schedules `kind` at `at`.
    pub(crate) fn push(&mut self, at: u64, kind: K) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// The earliest event (the first scheduled among equals).
    pub(crate) fn pop(&mut self) -> Option<(u64, K)> {
        self.heap.pop().map(|Reverse(s)| (s.at, s.kind))
    }
}
