//! The debounce of `channel_vacated` and `member_removed`: held for [`DEBOUNCE`]; a
//! `channel_occupied` (or `member_added` of the same user) arriving meanwhile cancels both,
//! so a page reload sends nothing. The delay is constant, so held events wait in deadline
//! order: nothing is scanned.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::{Job, DEBOUNCE};
use crate::app::AppIdx;
use crate::protocol::webhook::Kind;

/// Debounce key: the channel, and the user for member events.
type Key = (AppIdx, Arc<str>, Option<Arc<str>>);

/// What became of an event offered to the debounce.
#[derive(Debug)]
pub(super) enum Offer {
    /// Not debounced (or no room to hold it): send it now.
    Send(Job),
    /// Held; an older held event of the same key it replaced, to be released.
    Held(Option<Job>),
    /// A return within the debounce: neither the held leave nor the return is sent.
    Cancelled(Job, Job),
}

/// Held leaves: by key (for cancelling) and in deadline order. A replaced or cancelled
/// event leaves a stale entry in `order`, skipped by its generation.
pub(super) struct Debounce {
    by_key: HashMap<Key, (Job, u64)>,
    order: VecDeque<(Instant, Key, u64)>,
    generation: u64,
    capacity: usize,
}

impl Debounce {
    /// Holds at most `capacity` events; past that, leaves are sent at once.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
            capacity,
        }
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Takes `job`, arriving at `now`.
    pub(super) fn offer(&mut self, job: Job, now: Instant) -> Offer {
        let key = (
            job.app,
            job.event.channel.clone(),
            job.event.user_id.clone(),
        );
        match job.event.kind {
            Kind::ChannelVacated | Kind::MemberRemoved => {
                if self.by_key.len() >= self.capacity && !self.by_key.contains_key(&key) {
                    return Offer::Send(job);
                }
                self.generation += 1;
                self.order
                    .push_back((now + DEBOUNCE, key.clone(), self.generation));
                Offer::Held(
                    self.by_key
                        .insert(key, (job, self.generation))
                        .map(|(old, _)| old),
                )
            }
            Kind::ChannelOccupied | Kind::MemberAdded => match self.by_key.remove(&key) {
                Some((left, _)) => Offer::Cancelled(left, job),
                None => Offer::Send(job),
            },
            _ => Offer::Send(job),
        }
    }

    /// The held events whose time is up at `now`, in the order they arrived.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Job> {
        let mut due = Vec::new();
        while let Some((at, _, _)) = self.order.front() {
            if *at > now {
                break;
            }
            let (_, key, generation) = self.order.pop_front().expect("front exists");
            if self.by_key.get(&key).is_some_and(|(_, g)| *g == generation) {
                let (job, _) = self.by_key.remove(&key).expect("present");
                due.push(job);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::webhook::Event;

    fn job(kind: Kind, channel: &str, user: Option<&str>) -> Job {
        let mut event = Event::new(kind, channel);
        event.user_id = user.map(Arc::from);
        Job::new(0, event)
    }

    fn kinds(jobs: &[Job]) -> Vec<(Kind, String)> {
        jobs.iter()
            .map(|j| (j.event.kind, j.event.channel.to_string()))
            .collect()
    }

    #[test]
    fn a_vacated_channel_is_reported_after_three_seconds() {
        let mut d = Debounce::new(10);
        let t = Instant::now();
        assert!(matches!(
            d.offer(job(Kind::ChannelVacated, "a", None), t),
            Offer::Held(None)
        ));
        assert!(d.due(t + DEBOUNCE / 2).is_empty());
        assert_eq!(
            kinds(&d.due(t + DEBOUNCE)),
            [(Kind::ChannelVacated, "a".into())]
        );
        assert!(d.due(t + DEBOUNCE * 2).is_empty(), "sent once");
    }

    #[test]
    fn a_return_within_three_seconds_cancels_both() {
        let mut d = Debounce::new(10);
        let t = Instant::now();
        d.offer(job(Kind::ChannelVacated, "a", None), t);
        let back = d.offer(job(Kind::ChannelOccupied, "a", None), t + DEBOUNCE / 2);
        assert!(matches!(back, Offer::Cancelled(..)), "{back:?}");
        assert!(d.due(t + DEBOUNCE).is_empty());
        // Once reported, a return is news again.
        d.offer(job(Kind::ChannelVacated, "a", None), t);
        d.due(t + DEBOUNCE);
        let back = d.offer(job(Kind::ChannelOccupied, "a", None), t + DEBOUNCE);
        assert!(matches!(back, Offer::Send(_)));
    }

    #[test]
    fn members_are_debounced_per_user() {
        let mut d = Debounce::new(10);
        let t = Instant::now();
        d.offer(job(Kind::MemberRemoved, "presence-a", Some("ann")), t);
        let other = d.offer(job(Kind::MemberAdded, "presence-a", Some("bob")), t);
        assert!(
            matches!(other, Offer::Send(_)),
            "bob's arrival is not ann's return"
        );
        let back = d.offer(job(Kind::MemberAdded, "presence-a", Some("ann")), t);
        assert!(matches!(back, Offer::Cancelled(..)));
    }

    #[test]
    fn a_second_leave_replaces_the_first_and_waits_its_own_three_seconds() {
        let mut d = Debounce::new(10);
        let t = Instant::now();
        d.offer(job(Kind::ChannelVacated, "a", None), t);
        let later = t + DEBOUNCE / 2;
        assert!(matches!(
            d.offer(job(Kind::ChannelVacated, "a", None), later),
            Offer::Held(Some(_))
        ));
        assert!(d.due(t + DEBOUNCE).is_empty());
        assert_eq!(d.due(later + DEBOUNCE).len(), 1);
    }

    #[test]
    fn other_events_pass_and_a_full_debounce_sends_at_once() {
        let mut d = Debounce::new(1);
        let t = Instant::now();
        assert!(matches!(
            d.offer(job(Kind::ClientEvent, "private-a", None), t),
            Offer::Send(_)
        ));
        d.offer(job(Kind::ChannelVacated, "a", None), t);
        assert!(matches!(
            d.offer(job(Kind::ChannelVacated, "b", None), t),
            Offer::Send(_)
        ));
    }
}
