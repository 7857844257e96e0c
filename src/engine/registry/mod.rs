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
//! object-safe face of [`Channel`](super::Channel); nothing here allocates.
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
//!
//! # Sharing across CPUs
//!
//! The registry is `Sync` and every method takes `&self`: put it in a
//! `static` (with `'static` channels) or share a reference. Bookkeeping
//! (clients, requests, adding and removing channels, looking up a CPU's
//! channel) takes one lock; [`Registry::channel`] takes only the lock of
//! the channel asked for, so CPUs working on their own channels do not
//! wait for each other. A per-CPU client looks its CPUs' handles up once,
//! and again after each [`Event`]; a handle that went stale meanwhile is
//! refused ([`RegistryError::Unknown`]), never another channel.
//!
//! With [`X86Interrupts`](super::shared::X86Interrupts) as `I`, every lock
//! is held with the local CPU's interrupts off, so an interrupt handler may
//! call any method (nothing in them waits for hardware or allocates) as
//! long as the code it interrupted cannot hold the same lock: with
//! [`NoMasking`] it must not use the registry at all. A channel's
//! [`DmaChannel::wait`] under its guard holds that channel's lock while it
//! waits: other users of the same channel (only) wait too.
//!
//! ```no_run
//! # #[cfg(target_arch = "x86_64")]
//! # mod kernel {
//! use dmaengine::engine::registry::{
//!     ChannelHandle, ClientId, Event, EventCallback, Registry, RegistryError,
//! };
//! use dmaengine::engine::shared::X86Interrupts;
//! use dmaengine::engine::{Cookie, DmaError};
//! use dmaengine::hal::DmaAddr;
//!
//! /// Every CPU and every interrupt handler reach it: it is `Sync`.
//! static DMA: Registry<'static, 8, 16, X86Interrupts> = Registry::new();
//!
//! fn on_event(_client: ClientId, _event: Event, _context: usize) {
//!     // Only note it (the registry is locked here): look the CPUs'
//!     // channels up again outside the callback.
//! }
//!
//! /// At start-up: one channel per CPU, engines first (the kernel has
//! /// added its engines' channels and a CPU-engine fallback per CPU with
//! /// `DMA.add_channel` and `DMA.add_fallback_channel`).
//! fn networking_client(cpus: usize) -> Result<ClientId, RegistryError> {
//!     let client = DMA.register_client(EventCallback { func: on_event, context: 0 })?;
//!     DMA.request_per_cpu(client, cpus)?;
//!     Ok(client)
//! }
//!
//! /// What refused a copy.
//! pub enum CopyError {
//!     /// The handle went stale (an event said so) or is not the client's.
//!     Registry(RegistryError),
//!     /// The channel refused the request.
//!     Dma(DmaError),
//! }
//!
//! /// On a CPU: its own channel (`DMA.channel_for_cpu(client, cpu)`,
//! /// looked up once and again after an event), locked alone.
//! ///
//! /// # Safety
//! /// As for `Channel::prep`: both ranges stay valid DMA memory, untouched,
//! /// until the copy ends.
//! unsafe fn copy(
//!     client: ClientId,
//!     handle: ChannelHandle,
//!     dst: DmaAddr,
//!     src: DmaAddr,
//!     len: usize,
//! ) -> Result<Cookie, CopyError> {
//!     let mut channel = DMA.channel(client, handle).map_err(CopyError::Registry)?;
//!     // SAFETY: per this function's contract.
//!     let cookie = unsafe { channel.memcpy_buf_to_buf(dst, src, len) }.map_err(CopyError::Dma)?;
//!     channel.issue_pending();
//!     Ok(cookie)
//! }
//! # }
//! ```

use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

use crate::slots::{Key, SlotMap, take_id};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{IrqControl, Masked, NoMasking, SpinMutex};

mod dyn_channel;
mod error;
mod state;

pub use dyn_channel::DmaChannel;
pub use error::{AddError, RegistryError};
use state::{Cell, Client, SlotInfo, State};

/// A registered client. It names one registration in one registry: after
/// `unregister_client` it is refused ([`RegistryError::Unknown`]) even once
/// its slot holds another client, and another registry refuses it
/// ([`RegistryError::Foreign`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId {
    key: Key,
    registry: u64,
}

/// A channel in the registry: one `add_channel` of one registry, refused
/// once that channel is removed (even if added again: it gets a new handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelHandle {
    key: Key,
    registry: u64,
}

/// Registry identities, so a handle of one is refused by another.
// `core`'s even under loom: a static outlives the model's executions, and
// the number is only an identity.
/// Registry identities: 64 bits, never wrapping ([`take_id`]).
static NEXT_REGISTRY_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// What a client's callback is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// This channel is now the client's. One taken back from another
    /// client while its engine was still stopping (an engine whose
    /// `terminate` cannot stop it at once) comes halted: its `reset`
    /// refuses until the engine has stopped, then makes it usable.
    ChannelAdded(ChannelHandle),
    /// This channel is no longer the client's (its engine went away, or the
    /// client asked for fewer); it was terminated: nothing is in flight once
    /// its engine has stopped (see [`Channel::terminate`](super::Channel::terminate); until then its
    /// requests stay in flight and their memory in the device's hands).
    ChannelRemoved(ChannelHandle),
}

/// A client's event callback: `func(client, event, context)`. It runs from
/// inside the registry call that caused the event, with the registry
/// locked, so it must not call back into the registry (that would spin
/// forever); it records the event.
#[derive(Clone, Copy, Debug)]
pub struct EventCallback {
    /// The function.
    pub func: fn(ClientId, Event, usize),
    /// Passed through as the third argument.
    pub context: usize,
}

/// Up to `C` clients sharing up to `N` channels; `Sync`, with every method
/// taking `&self` (see the [module docs](self#sharing-across-cpus)).
///
/// `I` masks this CPU's interrupts while a lock is held (as in a
/// [`SharedChannel`](super::SharedChannel)): [`X86Interrupts`] when an
/// interrupt handler uses the registry, [`NoMasking`] (the default) when
/// none does.
///
/// [`X86Interrupts`]: super::shared::X86Interrupts
pub struct Registry<'a, const C: usize = 8, const N: usize = 8, I: IrqControl = NoMasking> {
    state: SpinMutex<State<C, N>>,
    cells: [SpinMutex<Cell<'a>>; N],
    /// This registry's identity (0 until the first handle is made).
    id: AtomicU64,
    _irq: PhantomData<fn() -> I>,
}

/// A client's channel, locked: other users of this channel wait, nobody
/// else does. This CPU's interrupts stay masked (by the registry's `I`)
/// until it is dropped, so keep it briefly.
///
/// Not `Send` (a type check, since it was found to be `Send`): it restores
/// the interrupt flag of the CPU that locked it, so a task must not hold
/// it across an `.await`, where it could resume on another CPU.
///
/// ```compile_fail,E0277
/// use dmaengine::engine::registry::{ChannelHandle, ClientId, Registry};
/// fn is_send<T: Send>(_: &T) {}
/// fn use_it(registry: &Registry<'_>, client: ClientId, handle: ChannelHandle) {
///     if let Ok(guard) = registry.channel(client, handle) {
///         is_send(&guard);
///     }
/// }
/// ```
pub struct ChannelGuard<'g, 'a, I: IrqControl> {
    cell: Masked<'g, Cell<'a>, I>,
    /// Not `Send`: see above.
    _this_cpu: PhantomData<*const ()>,
}

impl<'a, I: IrqControl> Deref for ChannelGuard<'_, 'a, I> {
    type Target = dyn DmaChannel + Send + 'a;
    fn deref(&self) -> &Self::Target {
        match self.cell.channel.as_deref() {
            Some(channel) => channel,
            // `Registry::channel` hands out guards of occupied cells only,
            // and the cell cannot change while the guard holds its lock.
            None => unreachable!("a channel guard of an empty slot"),
        }
    }
}

impl<I: IrqControl> DerefMut for ChannelGuard<'_, '_, I> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self.cell.channel.as_deref_mut() {
            Some(channel) => channel,
            None => unreachable!("a channel guard of an empty slot"),
        }
    }
}

impl<const C: usize, const N: usize, I: IrqControl> Default for Registry<'_, C, N, I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, const C: usize, const N: usize, I: IrqControl> Registry<'a, C, N, I> {
    /// An empty registry.
    #[cfg(not(all(test, loom)))]
    pub const fn new() -> Self {
        Registry {
            state: SpinMutex::new(State {
                clients: SlotMap::new(),
                slots: SlotMap::new(),
                id: 0,
            }),
            cells: [const {
                SpinMutex::new(Cell {
                    channel: None,
                    handle: None,
                    owner: None,
                })
            }; N],
            id: AtomicU64::new(0),
            _irq: PhantomData,
        }
    }

    /// An empty registry (loom's locks and atomics cannot be made in a
    /// `const`).
    #[cfg(all(test, loom))]
    pub fn new() -> Self {
        Registry {
            state: SpinMutex::new(State {
                clients: SlotMap::new(),
                slots: SlotMap::new(),
                id: 0,
            }),
            cells: core::array::from_fn(|_| {
                SpinMutex::new(Cell {
                    channel: None,
                    handle: None,
                    owner: None,
                })
            }),
            id: AtomicU64::new(0),
            _irq: PhantomData,
        }
    }

    /// The state, locked, with this registry's identity given out the
    /// first time (a registry that made no handle refuses every one).
    fn state(&self) -> Masked<'_, State<C, N>, I> {
        let mut state = Masked::lock(&self.state);
        if state.id == 0 {
            state.id = take_id(&NEXT_REGISTRY_ID);
            self.id.store(state.id, Ordering::Release);
        }
        state
    }

    /// Sets every slot's generation: how a test reaches the last ones.
    #[cfg(test)]
    pub(crate) fn set_generations(&self, generation: u64) {
        let mut state = self.state();
        state.clients.set_generations(generation);
        state.slots.set_generations(generation);
    }

    /// Registers a client (`dma_async_client_register`). It holds no
    /// channel until it asks for some.
    pub fn register_client(&self, callback: EventCallback) -> Result<ClientId, RegistryError> {
        let mut state = self.state();
        let key = state
            .clients
            .insert(Client {
                callback,
                wanted: 0,
            })
            .map_err(|_| RegistryError::Full)?;
        Ok(ClientId {
            key,
            registry: state.id,
        })
    }

    /// Unregisters a client, taking back its channels (it is told of each)
    /// and offering them to the others.
    pub fn unregister_client(&self, client: ClientId) -> Result<(), RegistryError> {
        let mut state = self.state();
        self.request_locked(&mut state, client, 0)?;
        state.clients.remove(client.key);
        state.offer(&self.cells);
        Ok(())
    }

    /// Asks for `count` channels in all (`dma_async_client_chan_request`).
    /// The client may get fewer now and more later, as channels free up or
    /// appear; asking for fewer than it holds gives the extra back.
    pub fn request_channels(&self, client: ClientId, count: usize) -> Result<(), RegistryError> {
        let mut state = self.state();
        self.request_locked(&mut state, client, count)
    }

    fn request_locked(
        &self,
        state: &mut State<C, N>,
        client: ClientId,
        count: usize,
    ) -> Result<(), RegistryError> {
        let index = state.client_index(client)?;
        let entry = state
            .clients
            .get_index_mut(index)
            .ok_or(RegistryError::Unknown)?;
        entry.wanted = count;
        let mut held = state.held_by(index);
        // Fallbacks go back first, then engine channels, newest first.
        for fallback in [true, false] {
            for slot in (0..N).rev() {
                if held <= count {
                    break;
                }
                let owned = state
                    .slots
                    .get_index(slot)
                    .is_some_and(|s| s.owner == Some(index) && s.fallback == fallback);
                if owned {
                    state.take_back(&self.cells, slot);
                    held -= 1;
                }
            }
        }
        state.offer(&self.cells);
        Ok(())
    }

    /// Adds a channel (an engine appeared); it goes to a client that wants
    /// one, if any, or replaces a fallback a client holds. A halted channel
    /// is reset first, so no client is handed a channel that refuses
    /// everything. A refused channel comes back in the error.
    pub fn add_channel(
        &self,
        channel: &'a mut (dyn DmaChannel + Send),
    ) -> Result<ChannelHandle, AddError<'a>> {
        self.add(channel, false)
    }

    /// Adds a fallback channel: one handed out only when no engine channel
    /// is free (the kernel adds a CPU-engine channel per CPU, so every CPU
    /// of a [`Registry::request_per_cpu`] client has a channel).
    pub fn add_fallback_channel(
        &self,
        channel: &'a mut (dyn DmaChannel + Send),
    ) -> Result<ChannelHandle, AddError<'a>> {
        self.add(channel, true)
    }

    fn add(
        &self,
        channel: &'a mut (dyn DmaChannel + Send),
        fallback: bool,
    ) -> Result<ChannelHandle, AddError<'a>> {
        let mut state = self.state();
        if !state.slots.has_room() {
            return Err(AddError {
                error: RegistryError::Full,
                channel,
            });
        }
        if channel.is_halted() && channel.reset().is_err() {
            // Still stopping, say: only the caller can poll it to its end.
            return Err(AddError {
                error: RegistryError::ResetFailed,
                channel,
            });
        }
        let key = match state.slots.insert(SlotInfo {
            owner: None,
            fallback,
        }) {
            Ok(key) => key,
            Err(_) => {
                return Err(AddError {
                    error: RegistryError::Full,
                    channel,
                });
            }
        };
        let handle = ChannelHandle {
            key,
            registry: state.id,
        };
        *self.cells[key.index()].lock() = Cell {
            channel: Some(channel),
            handle: Some(handle),
            owner: None,
        };
        state.offer(&self.cells);
        Ok(handle)
    }

    /// Removes a channel (its engine is going away): it is terminated (every
    /// request not complete ends `Aborted` once the engine has stopped
    /// touching memory: an engine that has not, edu's with a transfer in
    /// flight, leaves them in flight until a later call on the channel
    /// finds it stopped; [`DmaChannel::is_stopping`] says which), its
    /// client is told, and it is reset (if it can be yet) and handed back
    /// to the caller. The handle is stale from now on. The client may be offered
    /// another channel. Waits for a user of the channel to drop its guard.
    pub fn remove_channel(
        &self,
        handle: ChannelHandle,
    ) -> Result<&'a mut (dyn DmaChannel + Send), RegistryError> {
        let mut state = self.state();
        let index = state.channel_index(handle)?;
        let slot = state
            .slots
            .remove(handle.key)
            .ok_or(RegistryError::Unknown)?;
        let taken = core::mem::replace(
            &mut *self.cells[index].lock(),
            Cell {
                channel: None,
                handle: None,
                owner: None,
            },
        );
        let channel = taken.channel.ok_or(RegistryError::Unknown)?;
        channel.terminate();
        if let Some(owner) = slot.owner
            && let Some(client) = state.clients.get_index(owner)
            && let Some(id) = state.client_id(owner)
        {
            let (callback, client) = (client.callback, id);
            (callback.func)(client, Event::ChannelRemoved(handle), callback.context);
        }
        // A reset that fails leaves the channel halted; `add_channel` tries
        // again and says so.
        let _ = channel.reset();
        state.offer(&self.cells);
        Ok(channel)
    }

    /// The channel `handle`, locked, if `client` holds it. Takes only that
    /// channel's lock: CPUs using their own channels never wait for each
    /// other, nor for the registry's bookkeeping.
    pub fn channel(
        &self,
        client: ClientId,
        handle: ChannelHandle,
    ) -> Result<ChannelGuard<'_, 'a, I>, RegistryError> {
        let id = self.id.load(Ordering::Acquire);
        if id == 0 || client.registry != id || handle.registry != id {
            return Err(RegistryError::Foreign);
        }
        let cell = Masked::lock(
            self.cells
                .get(handle.key.index())
                .ok_or(RegistryError::Unknown)?,
        );
        if cell.handle != Some(handle) || cell.channel.is_none() {
            return Err(RegistryError::Unknown);
        }
        if cell.owner == Some(client) {
            return Ok(ChannelGuard {
                cell,
                _this_cpu: PhantomData,
            });
        }
        // The slow path names the error; the state lock comes first, so the
        // channel's is given up before it is taken.
        drop(cell);
        match self.state().client_index(client) {
            Ok(_) => Err(RegistryError::NotOwner),
            Err(e) => Err(e),
        }
    }

    /// Asks for a channel for each of `cpus` CPUs (see the [module
    /// docs](self)): as [`Registry::request_channels`], with engine
    /// channels first and fallbacks for the rest.
    pub fn request_per_cpu(&self, client: ClientId, cpus: usize) -> Result<(), RegistryError> {
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
        let state = self.state();
        let index = state.client_index(client)?;
        let held = state.held_by(index);
        if held == 0 {
            return Err(RegistryError::NoChannel);
        }
        let nth = cpu % held;
        let owned = |fallback: bool| {
            state
                .slots
                .iter()
                .filter(move |(_, s)| s.owner == Some(index) && s.fallback == fallback)
        };
        let (key, _) = owned(false)
            .chain(owned(true))
            .nth(nth)
            .ok_or(RegistryError::NoChannel)?;
        Ok(ChannelHandle {
            key,
            registry: state.id,
        })
    }

    /// How many channels `client` holds (0 for a stale or foreign id).
    pub fn channels_of(&self, client: ClientId) -> usize {
        let state = self.state();
        state
            .client_index(client)
            .map_or(0, |index| state.held_by(index))
    }
}
