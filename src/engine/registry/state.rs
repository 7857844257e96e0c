//! The registry's bookkeeping behind its lock: clients, owners and
//! generations.

use super::{ChannelHandle, ClientId, DmaChannel, Event, EventCallback, RegistryError};
use crate::slots::SlotMap;
use crate::sync::SpinMutex;

pub(super) struct Client {
    pub(super) callback: EventCallback,
    pub(super) wanted: usize,
}

/// What the registry knows of a channel slot, under the state lock.
#[derive(Clone, Copy)]
pub(super) struct SlotInfo {
    pub(super) owner: Option<usize>,
    /// A fallback (CPU-engine) channel: handed out after every engine one.
    pub(super) fallback: bool,
}

/// A channel slot's own lock: the channel and who may use it, checked by
/// [`Registry::channel`] without the state lock.
pub(super) struct Cell<'a> {
    pub(super) channel: Option<&'a mut (dyn DmaChannel + Send)>,
    /// The handle that names this channel (generation and registry).
    pub(super) handle: Option<ChannelHandle>,
    /// The client that holds it.
    pub(super) owner: Option<ClientId>,
}

/// Clients, owners and generations: everything but the channels. Clients
/// and channel slots are generational slot maps ([`crate::slots`]): a
/// handle names one use of a slot, and once that use ends it is stale for
/// good.
pub(super) struct State<const C: usize, const N: usize> {
    pub(super) clients: SlotMap<Client, C>,
    pub(super) slots: SlotMap<SlotInfo, N>,
    /// The registry's identity:
    /// 0 until the first handle is made, and once ids ran out (never, in
    /// practice): every id is refused then.
    pub(super) id: u64,
}

impl<const C: usize, const N: usize> State<C, N> {
    /// The id of the client in slot `index`, if there is one.
    pub(super) fn client_id(&self, index: usize) -> Option<ClientId> {
        self.clients.key_at(index).map(|key| ClientId {
            key,
            registry: self.id,
        })
    }

    /// The handle of the channel in slot `index`, if there is one.
    pub(super) fn handle(&self, index: usize) -> Option<ChannelHandle> {
        self.slots.key_at(index).map(|key| ChannelHandle {
            key,
            registry: self.id,
        })
    }

    /// The slot of a live client, or why `client` names none.
    pub(super) fn client_index(&self, client: ClientId) -> Result<usize, RegistryError> {
        if client.registry != self.id || self.id == 0 {
            return Err(RegistryError::Foreign);
        }
        self.clients
            .get(client.key)
            .map(|_| client.key.index())
            .ok_or(RegistryError::Unknown)
    }

    /// The slot of a live channel, or why `handle` names none.
    pub(super) fn channel_index(&self, handle: ChannelHandle) -> Result<usize, RegistryError> {
        if handle.registry != self.id || self.id == 0 {
            return Err(RegistryError::Foreign);
        }
        self.slots
            .get(handle.key)
            .map(|_| handle.key.index())
            .ok_or(RegistryError::Unknown)
    }

    pub(super) fn held_by(&self, client: usize) -> usize {
        self.slots
            .iter()
            .filter(|(_, s)| s.owner == Some(client))
            .count()
    }

    pub(super) fn wants_more(&self, client: usize) -> bool {
        self.clients
            .get_index(client)
            .is_some_and(|c| self.held_by(client) < c.wanted)
    }

    /// A free channel of the given kind.
    pub(super) fn free(&self, fallback: bool) -> Option<usize> {
        (0..N).find(|&i| {
            self.slots
                .get_index(i)
                .is_some_and(|s| s.owner.is_none() && s.fallback == fallback)
        })
    }

    /// A fallback channel `client` holds.
    pub(super) fn owned_fallback(&self, client: usize) -> Option<usize> {
        (0..N).rev().find(|&i| {
            self.slots
                .get_index(i)
                .is_some_and(|s| s.owner == Some(client) && s.fallback)
        })
    }

    /// Gives free channels to clients that want more, in registration
    /// order, engine channels before fallbacks; then swaps free engine
    /// channels in for fallbacks that clients hold.
    pub(super) fn offer(&mut self, cells: &[SpinMutex<Cell<'_>>]) {
        for c in 0..C {
            for fallback in [false, true] {
                while self.wants_more(c)
                    && let Some(index) = self.free(fallback)
                {
                    self.give(cells, c, index);
                }
            }
        }
        for c in 0..C {
            while let Some(held) = self.owned_fallback(c)
                && let Some(index) = self.free(false)
            {
                self.give(cells, c, index);
                self.take_back(cells, held);
            }
        }
    }

    /// Hands free channel `index` to client `c` and tells it.
    pub(super) fn give(&mut self, cells: &[SpinMutex<Cell<'_>>], c: usize, index: usize) {
        let Some(callback) = self.clients.get_index(c).map(|client| client.callback) else {
            return;
        };
        let (Some(client), Some(handle)) = (self.client_id(c), self.handle(index)) else {
            return;
        };
        if let Some(slot) = self.slots.get_index_mut(index) {
            slot.owner = Some(c);
            cells[index].lock().owner = Some(client);
            (callback.func)(client, Event::ChannelAdded(handle), callback.context);
        }
    }

    /// Takes channel `index` back from its owner: terminated (nothing stays
    /// in flight), reset, and the owner told.
    pub(super) fn take_back(&mut self, cells: &[SpinMutex<Cell<'_>>], index: usize) {
        let handle = self.handle(index);
        let Some(slot) = self.slots.get_index_mut(index) else {
            return;
        };
        let Some(owner) = slot.owner.take() else {
            return;
        };
        {
            let mut cell = cells[index].lock();
            cell.owner = None;
            if let Some(channel) = cell.channel.as_deref_mut() {
                channel.terminate();
                let _ = channel.reset();
            }
        }
        if let Some(callback) = self.clients.get_index(owner).map(|c| c.callback)
            && let (Some(client), Some(handle)) = (self.client_id(owner), handle)
        {
            (callback.func)(client, Event::ChannelRemoved(handle), callback.context);
        }
    }
}
