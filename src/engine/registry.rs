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
}

impl dyn DmaChannel + '_ {
    /// The seed's `dma_async_memcpy_buf_to_buf` on any channel.
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

/// A registered client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(usize);

/// A channel in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelHandle(usize);

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
    /// No such client or channel.
    Unknown,
    /// The channel is not this client's.
    NotOwner,
}

impl core::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RegistryError::Full => "registry full",
            RegistryError::Unknown => "no such client or channel",
            RegistryError::NotOwner => "channel belongs to another client",
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
}

/// Up to `C` clients sharing up to `N` channels.
pub struct Registry<'a, const C: usize = 8, const N: usize = 8> {
    clients: [Option<Client>; C],
    channels: [Option<Slot<'a>>; N],
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
        }
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
        Ok(ClientId(slot))
    }

    /// Unregisters a client, taking back its channels (it is told of each)
    /// and offering them to the others.
    pub fn unregister_client(&mut self, client: ClientId) -> Result<(), RegistryError> {
        self.request_channels(client, 0)?;
        self.clients[client.0] = None;
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
        let entry = self
            .clients
            .get_mut(client.0)
            .and_then(Option::as_mut)
            .ok_or(RegistryError::Unknown)?;
        entry.wanted = count;
        let callback = entry.callback;
        let mut held = self.held_by(client.0);
        for index in (0..N).rev() {
            if held <= count {
                break;
            }
            if let Some(slot) = self.channels[index]
                .as_mut()
                .filter(|s| s.owner == Some(client.0))
            {
                slot.channel.terminate();
                let _ = slot.channel.reset();
                slot.owner = None;
                held -= 1;
                (callback.func)(
                    client,
                    Event::ChannelRemoved(ChannelHandle(index)),
                    callback.context,
                );
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

    /// Gives free channels to clients that want more, in registration order.
    fn offer(&mut self) {
        for c in 0..C {
            let Some(client) = self.clients[c].as_ref() else {
                continue;
            };
            let (wanted, callback) = (client.wanted, client.callback);
            let mut held = self.held_by(c);
            for index in 0..N {
                if held >= wanted {
                    break;
                }
                if let Some(slot) = self.channels[index].as_mut().filter(|s| s.owner.is_none()) {
                    slot.owner = Some(c);
                    held += 1;
                    (callback.func)(
                        ClientId(c),
                        Event::ChannelAdded(ChannelHandle(index)),
                        callback.context,
                    );
                }
            }
        }
    }

    /// Adds a channel (an engine appeared); it goes to a client that wants
    /// one, if any.
    pub fn add_channel(
        &mut self,
        channel: &'a mut dyn DmaChannel,
    ) -> Result<ChannelHandle, RegistryError> {
        let index = self
            .channels
            .iter()
            .position(Option::is_none)
            .ok_or(RegistryError::Full)?;
        self.channels[index] = Some(Slot {
            channel,
            owner: None,
        });
        self.offer();
        Ok(ChannelHandle(index))
    }

    /// Removes a channel (its engine is going away): it is terminated, its
    /// client is told, and it is handed back to the caller. The client may
    /// be offered another channel.
    pub fn remove_channel(
        &mut self,
        handle: ChannelHandle,
    ) -> Result<&'a mut dyn DmaChannel, RegistryError> {
        let slot = self
            .channels
            .get_mut(handle.0)
            .and_then(Option::take)
            .ok_or(RegistryError::Unknown)?;
        slot.channel.terminate();
        if let Some(owner) = slot.owner
            && let Some(client) = self.clients[owner].as_ref()
        {
            (client.callback.func)(
                ClientId(owner),
                Event::ChannelRemoved(handle),
                client.callback.context,
            );
        }
        self.offer();
        Ok(slot.channel)
    }

    /// The channel `handle`, if `client` holds it.
    pub fn channel(
        &mut self,
        client: ClientId,
        handle: ChannelHandle,
    ) -> Result<&mut (dyn DmaChannel + 'a), RegistryError> {
        let slot = self
            .channels
            .get_mut(handle.0)
            .and_then(Option::as_mut)
            .ok_or(RegistryError::Unknown)?;
        if slot.owner != Some(client.0) {
            return Err(RegistryError::NotOwner);
        }
        Ok(&mut *slot.channel)
    }

    /// How many channels `client` holds.
    pub fn channels_of(&self, client: ClientId) -> usize {
        self.held_by(client.0)
    }
}
