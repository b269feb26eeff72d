//! Channels, subscribers and fan-out on this node, and the [`Broker`] that shares what must
//! be known across nodes.
//!
//! * [`ChannelIndex`] (shared by the node's workers, lock-free): for each occupied channel,
//!   which workers have subscribers and how many subscriptions there are. A publisher reads
//!   it to decide which workers get an event; a worker updates it when a channel's
//!   subscriptions on that worker change. Each update is one atomic compare-and-swap of an
//!   immutable value, so an entry is never removed while another worker adds to it.
//! * [`LocalChannels`] (one per worker, not `Send`): the worker's own subscribers of each
//!   channel. Delivery walks this list and pushes the same `Bytes` onto each [`Conn`]'s
//!   outbound queue.
//! * [`inbox`]: the one way work crosses from one worker to another — event deliveries,
//!   user-level messages, and the broker's answers.
//! * [`Broker`]: presence members, signed-in users, occupancy counts, cache channels' last
//!   events and cross-node events; [`LocalBroker`] is the in-process one.
//!
//! Ordering: a worker marks itself in the index *before* it answers
//! `subscription_succeeded`, so any event published after the client saw that answer
//! reaches it. Events from one publisher to one worker travel through one FIFO inbox, so a
//! subscriber sees a publisher's events in publish order.

pub mod broker;
mod channels;
mod conn;
pub mod inbox;
mod index;
pub mod router;

pub use broker::{Answer, Broker, BrokerError, LocalBroker, Pending};
pub use channels::{Delivered, LocalChannels};
pub use conn::{Conn, Phase, Push, MAX_BATCH_BYTES, MAX_BATCH_FRAMES};
pub use inbox::{inbox, Delivery, InboxReceiver, InboxSender, WorkerMsg};
pub use index::{ChannelIndex, Occupancy, WorkerSet};
pub use router::Router;
