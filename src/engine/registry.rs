//! Clients and channels: the 2005 proposal's `dma_async_client_register`
//! and `dma_async_client_chan_request`.
//!
//! A client registers with an event callback and asks for a number of
//! channels; the registry hands channels out as they become free or as
//! engines appear ([`Event::ChannelAdded`]) and takes them back when an
//! engine goes or the client asks for fewer ([`Event::ChannelRemoved`]). A
//! client uses only the channels it was given, through [`Registry::channel`].
//!
//! Channels of any engine are held as `&mut dyn` [`DmaChannel`], the
//! object-safe face of [`Channel`]; nothing here allocates.
//!
//! # A channel per CPU
//!
//! The proposal's networking client asks for "one channel for each
//! processor". Here it asks [`Registry::request_per_cpu`] and looks its
//! CPU's channel up with [`Registry::channel_for_cpu`]. Engine channels
//! ([`Registry::add_channel`]) are handed out first; fallback channels
//! ([`Registry::add_fallback_channel`], the kernel adds one CPU-engine
//! channel per CPU) make up the difference when there are fewer engines
//! than CPUs. When an engine appears, a client holding a fallback is given
//! the engine and the fallback is taken back; when one goes, a free
//! fallback replaces it. Each change is an [`Event`], after which the
//! client looks its CPUs' channels up again.

use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use embedded_hal::delay::DelayNs;

use super::{Capabilities, Channel, Cookie, DmaError, Engine, Limits, Op, PrepFlags, TxState};
use crate::hal::DmaAddr;

/// The operations of a channel that do not depend on its engine's type.
pub trait DmaChannel {
    /// The channel's unique number.
    fn id(&self) -> u32;
    /// What its engine can do.
    fn capabilities(&self) -> Capabilities;
    /// What one descriptor may hold.
    fn limits(&self) -> Limits;
    /// See [`Channel::prep`].
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    unsafe fn prep(&mut self, op: Op, flags: PrepFlags) -> Result<Cookie, DmaError>;
    /// See [`Channel::issue_pending`].
    fn issue_pending(&mut self);
    /// See [`Channel::status`].
    fn status(&mut self, cookie: Cookie) -> TxState;
    /// See [`Channel::wait`].
    fn wait(
        &mut self,
        cookie: Cookie,
        delay: &mut dyn DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError>;
    /// See [`Channel::terminate`].
    fn terminate(&mut self);
    /// See [`Channel::reset`].
    fn reset(&mut self) -> Result<(), DmaError>;
    /// See [`Channel::is_halted`].
    fn is_halted(&self) -> bool;
}

impl<E: Engine> DmaChannel for Channel<E> {
    fn id(&self) -> u32 {
        Channel::id(self)
    }
    fn capabilities(&self) -> Capabilities {
        self.engine().capabilities()
    }
    fn limits(&self) -> Limits {
        self.engine().limits()
    }
    unsafe fn prep(&mut self, op: Op, flags: PrepFlags) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `Channel::prep`'s contract.
        unsafe { Channel::prep(self, op, flags, None) }
    }
    fn issue_pending(&mut self) {
        Channel::issue_pending(self)
    }
    fn status(&mut self, cookie: Cookie) -> TxState {
        Channel::status(self, cookie)
    }
    fn wait(
        &mut self,
        cookie: Cookie,
        mut delay: &mut dyn DelayNs,
        timeout: Duration,
    ) -> Result<(), DmaError> {
        Channel::wait(self, cookie, &mut delay, timeout)
    }
    fn terminate(&mut self) {
        Channel::terminate(self)
    }
    fn reset(&mut self) -> Result<(), DmaError> {
        Channel::reset(self)
    }
    fn is_halted(&self) -> bool {
        Channel::is_halted(self)
    }
}

impl dyn DmaChannel + '_ {
    /// The 2005 I/OAT proposal's `dma_async_memcpy_buf_to_buf` on any channel.
    ///
    /// # Safety
    /// As for [`Channel::prep`].
    pub unsafe fn memcpy_buf_to_buf(
        &mut self,
        dst: DmaAddr,
        src: DmaAddr,
        len: usize,
    ) -> Result<Cookie, DmaError> {
        // SAFETY: the caller upholds `Channel::prep`'s contract.
        unsafe { self.prep(Op::Copy { dst, src, len }, PrepFlags::empty()) }
    }
}

/// A registered client. It names one registration in one registry: after
/// `unregister_client` it is refused ([`RegistryError::Unknown`]) even once
/// its slot holds another client, and another registry refuses it
/// ([`RegistryError::Foreign`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId {
    index: usize,
    generation: u32,
    registry: u32,
}

/// A channel in the registry: one `add_channel` of one registry, refused
/// once that channel is removed (even if added again: it gets a new handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelHandle {
    index: usize,
    generation: u32,
    registry: u32,
}

/// Registry identities, so a handle of one is refused by another.
static NEXT_REGISTRY_ID: AtomicU32 = AtomicU32::new(1);

/// What a client's callback is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// This channel is now the client's.
    ChannelAdded(ChannelHandle),
    /// This channel is no longer the client's (its engine went away, or the
    /// client asked for fewer); it was terminated, so nothing is in flight.
    ChannelRemoved(ChannelHandle),
}

/// A client's event callback: `func(client, event, context)`. It runs from
/// inside the registry call that caused the event, so it must not call back
/// into the registry; it records the event.
#[derive(Clone, Copy, Debug)]
pub struct EventCallback {
    /// The function.
    pub func: fn(ClientId, Event, usize),
    /// Passed through as the third argument.
    pub context: usize,
}

/// Errors of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistryError {
    /// No room for another client or channel.
    Full,
    /// No such client or channel: never registered, or unregistered or
    /// removed since (a stale handle).
    Unknown,
    /// The handle belongs to another registry.
    Foreign,
    /// The channel is not this client's.
    NotOwner,
    /// A halted channel could not be reset, so it was not added.
    ResetFailed,
    /// The client holds no channel (yet).
    NoChannel,
}

impl core::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RegistryError::Full => "registry full",
            RegistryError::Unknown => "no such client or channel (or a stale handle)",
            RegistryError::Foreign => "handle of another registry",
            RegistryError::NotOwner => "channel belongs to another client",
            RegistryError::ResetFailed => "the halted channel could not be reset",
            RegistryError::NoChannel => "the client holds no channel",
        })
    }
}

impl core::error::Error for RegistryError {}

struct Client {
    callback: EventCallback,
    wanted: usize,
}

struct Slot<'a> {
    channel: &'a mut dyn DmaChannel,
    owner: Option<usize>,
    /// A fallback (CPU-engine) channel: handed out after every engine one.
    fallback: bool,
}

/// Up to `C` clients sharing up to `N` channels.
pub struct Registry<'a, const C: usize = 8, const N: usize = 8> {
    clients: [Option<Client>; C],
    channels: [Option<Slot<'a>>; N],
    /// Bumped each time a slot is emptied, so old handles go stale.
    client_generations: [u32; C],
    channel_generations: [u32; N],
    /// This registry's identity (0 until the first handle is made).
    id: u32,
}

impl<const C: usize, const N: usize> Default for Registry<'_, C, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, const C: usize, const N: usize> Registry<'a, C, N> {
    /// An empty registry.
    pub const fn new() -> Self {
        Registry {
            clients: [const { None }; C],
            channels: [const { None }; N],
            client_generations: [0; C],
            channel_generations: [0; N],
            id: 0,
        }
    }

    fn id(&mut self) -> u32 {
        if self.id == 0 {
            self.id = NEXT_REGISTRY_ID.fetch_add(1, Ordering::Relaxed);
        }
        self.id
    }

    fn client_id(&mut self, index: usize) -> ClientId {
        ClientId {
            index,
            generation: self.client_generations[index],
            registry: self.id(),
        }
    }

    fn handle(&mut self, index: usize) -> ChannelHandle {
        ChannelHandle {
            index,
            generation: self.channel_generations[index],
            registry: self.id(),
        }
    }

    /// The slot of a live client, or why `client` names none.
    fn client_index(&self, client: ClientId) -> Result<usize, RegistryError> {
        if client.registry != self.id {
            return Err(RegistryError::Foreign);
        }
        let live = self.clients.get(client.index).is_some_and(Option::is_some)
            && self.client_generations[client.index] == client.generation;
        live.then_some(client.index).ok_or(RegistryError::Unknown)
    }

    /// The slot of a live channel, or why `handle` names none.
    fn channel_index(&self, handle: ChannelHandle) -> Result<usize, RegistryError> {
        if handle.registry != self.id {
            return Err(RegistryError::Foreign);
        }
        let live = self.channels.get(handle.index).is_some_and(Option::is_some)
            && self.channel_generations[handle.index] == handle.generation;
        live.then_some(handle.index).ok_or(RegistryError::Unknown)
    }

    /// Registers a client (`dma_async_client_register`). It holds no
    /// channel until it asks for some.
    pub fn register_client(&mut self, callback: EventCallback) -> Result<ClientId, RegistryError> {
        let slot = self
            .clients
            .iter()
            .position(Option::is_none)
            .ok_or(RegistryError::Full)?;
        self.clients[slot] = Some(Client {
            callback,
            wanted: 0,
        });
        Ok(self.client_id(slot))
    }

    /// Unregisters a client, taking back its channels (it is told of each)
    /// and offering them to the others.
    pub fn unregister_client(&mut self, client: ClientId) -> Result<(), RegistryError> {
        self.request_channels(client, 0)?;
        self.clients[client.index] = None;
        self.client_generations[client.index] =
            self.client_generations[client.index].wrapping_add(1);
        self.offer();
        Ok(())
    }

    /// Asks for `count` channels in all (`dma_async_client_chan_request`).
    /// The client may get fewer now and more later, as channels free up or
    /// appear; asking for fewer than it holds gives the extra back.
    pub fn request_channels(
        &mut self,
        client: ClientId,
        count: usize,
    ) -> Result<(), RegistryError> {
        let index = self.client_index(client)?;
        let entry = self.clients[index].as_mut().ok_or(RegistryError::Unknown)?;
        entry.wanted = count;
        let mut held = self.held_by(index);
        // Fallbacks go back first, then engine channels, newest first.
        for fallback in [true, false] {
            for slot in (0..N).rev() {
                if held <= count {
                    break;
                }
                let owned = self.channels[slot]
                    .as_ref()
                    .is_some_and(|s| s.owner == Some(index) && s.fallback == fallback);
                if owned {
                    self.take_back(slot);
                    held -= 1;
                }
            }
        }
        self.offer();
        Ok(())
    }

    fn held_by(&self, client: usize) -> usize {
        self.channels
            .iter()
            .flatten()
            .filter(|s| s.owner == Some(client))
            .count()
    }

    /// Gives free channels to clients that want more, in registration
    /// order, engine channels before fallbacks; then swaps free engine
    /// channels in for fallbacks that clients hold.
    fn offer(&mut self) {
        for c in 0..C {
            for fallback in [false, true] {
                while self.wants_more(c)
                    && let Some(index) = self.free(fallback)
                {
                    self.give(c, index);
                }
            }
        }
        for c in 0..C {
            while let Some(held) = self.owned_fallback(c)
                && let Some(index) = self.free(false)
            {
                self.give(c, index);
                self.take_back(held);
            }
        }
    }

    fn wants_more(&self, client: usize) -> bool {
        self.clients[client]
            .as_ref()
            .is_some_and(|c| self.held_by(client) < c.wanted)
    }

    /// A free channel of the given kind.
    fn free(&self, fallback: bool) -> Option<usize> {
        self.channels.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.owner.is_none() && s.fallback == fallback)
        })
    }

    /// A fallback channel `client` holds.
    fn owned_fallback(&self, client: usize) -> Option<usize> {
        self.channels.iter().rposition(|s| {
            s.as_ref()
                .is_some_and(|s| s.owner == Some(client) && s.fallback)
        })
    }

    /// Hands free channel `index` to client `c` and tells it.
    fn give(&mut self, c: usize, index: usize) {
        let Some(callback) = self.clients[c].as_ref().map(|client| client.callback) else {
            return;
        };
        if let Some(slot) = self.channels[index].as_mut() {
            slot.owner = Some(c);
            let (client, handle) = (self.client_id(c), self.handle(index));
            (callback.func)(client, Event::ChannelAdded(handle), callback.context);
        }
    }

    /// Takes channel `index` back from its owner: terminated (nothing stays
    /// in flight), reset, and the owner told.
    fn take_back(&mut self, index: usize) {
        let Some(slot) = self.channels[index].as_mut() else {
            return;
        };
        let Some(owner) = slot.owner.take() else {
            return;
        };
        slot.channel.terminate();
        let _ = slot.channel.reset();
        if let Some(callback) = self.clients[owner].as_ref().map(|c| c.callback) {
            let (client, handle) = (self.client_id(owner), self.handle(index));
            (callback.func)(client, Event::ChannelRemoved(handle), callback.context);
        }
    }

    /// Adds a channel (an engine appeared); it goes to a client that wants
    /// one, if any, or replaces a fallback a client holds. A halted channel
    /// is reset first, so no client is handed a channel that refuses
    /// everything.
    pub fn add_channel(
        &mut self,
        channel: &'a mut dyn DmaChannel,
    ) -> Result<ChannelHandle, RegistryError> {
        self.add(channel, false)
    }

    /// Adds a fallback channel: one handed out only when no engine channel
    /// is free (the kernel adds a CPU-engine channel per CPU, so every CPU
    /// of a [`Registry::request_per_cpu`] client has a channel).
    pub fn add_fallback_channel(
        &mut self,
        channel: &'a mut dyn DmaChannel,
    ) -> Result<ChannelHandle, RegistryError> {
        self.add(channel, true)
    }

    fn add(
        &mut self,
        channel: &'a mut dyn DmaChannel,
        fallback: bool,
    ) -> Result<ChannelHandle, RegistryError> {
        let index = self
            .channels
            .iter()
            .position(Option::is_none)
            .ok_or(RegistryError::Full)?;
        if channel.is_halted() {
            channel.reset().map_err(|_| RegistryError::ResetFailed)?;
        }
        self.channels[index] = Some(Slot {
            channel,
            owner: None,
            fallback,
        });
        let handle = self.handle(index);
        self.offer();
        Ok(handle)
    }

    /// Removes a channel (its engine is going away): it is terminated (every
    /// request not complete ends `Aborted`, and the engine stops touching
    /// memory), its client is told, and it is reset and handed back to the
    /// caller. The handle is stale from now on. The client may be offered
    /// another channel.
    pub fn remove_channel(
        &mut self,
        handle: ChannelHandle,
    ) -> Result<&'a mut dyn DmaChannel, RegistryError> {
        let index = self.channel_index(handle)?;
        let slot = self.channels[index].take().ok_or(RegistryError::Unknown)?;
        self.channel_generations[index] = self.channel_generations[index].wrapping_add(1);
        slot.channel.terminate();
        if let Some(owner) = slot.owner
            && let Some(client) = self.clients[owner].as_ref()
        {
            let callback = client.callback;
            let client = self.client_id(owner);
            (callback.func)(client, Event::ChannelRemoved(handle), callback.context);
        }
        // A reset that fails leaves the channel halted; `add_channel` tries
        // again and says so.
        let _ = slot.channel.reset();
        self.offer();
        Ok(slot.channel)
    }

    /// The channel `handle`, if `client` holds it.
    pub fn channel(
        &mut self,
        client: ClientId,
        handle: ChannelHandle,
    ) -> Result<&mut (dyn DmaChannel + 'a), RegistryError> {
        let client = self.client_index(client)?;
        let index = self.channel_index(handle)?;
        let slot = self.channels[index]
            .as_mut()
            .ok_or(RegistryError::Unknown)?;
        if slot.owner != Some(client) {
            return Err(RegistryError::NotOwner);
        }
        Ok(&mut *slot.channel)
    }

    /// Asks for a channel for each of `cpus` CPUs (see the [module
    /// docs](self)): as [`Registry::request_channels`], with engine
    /// channels first and fallbacks for the rest.
    pub fn request_per_cpu(&mut self, client: ClientId, cpus: usize) -> Result<(), RegistryError> {
        self.request_channels(client, cpus)
    }

    /// The channel CPU `cpu` of `client` uses: its engine channels go to
    /// CPUs 0, 1, ... in order, then its fallbacks; with fewer channels
    /// than CPUs (the registry ran short), CPUs share them round-robin.
    pub fn channel_for_cpu(
        &self,
        client: ClientId,
        cpu: usize,
    ) -> Result<ChannelHandle, RegistryError> {
        let index = self.client_index(client)?;
        let held = self.held_by(index);
        if held == 0 {
            return Err(RegistryError::NoChannel);
        }
        let nth = cpu % held;
        let owned = |fallback: bool| {
            self.channels.iter().enumerate().filter(move |(_, s)| {
                s.as_ref()
                    .is_some_and(|s| s.owner == Some(index) && s.fallback == fallback)
            })
        };
        let (slot, _) = owned(false)
            .chain(owned(true))
            .nth(nth)
            .ok_or(RegistryError::NoChannel)?;
        Ok(ChannelHandle {
            index: slot,
            generation: self.channel_generations[slot],
            registry: self.id,
        })
    }

    /// How many channels `client` holds (0 for a stale or foreign id).
    pub fn channels_of(&self, client: ClientId) -> usize {
        self.client_index(client)
            .map_or(0, |index| self.held_by(index))
    }
}
