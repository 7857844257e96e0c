//! What the registry refuses, and why.

use super::DmaChannel;

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

/// A channel the registry did not add: why, and the channel back (the
/// caller lent it for the registry's whole lifetime, so a refusal that kept
/// it would lose it for good, with whatever it still has in flight).
pub struct AddError<'a> {
    /// Why (`Full` or `ResetFailed`); the registry is unchanged.
    pub error: RegistryError,
    /// The channel, as it was given (a `ResetFailed` one still halted).
    pub channel: &'a mut (dyn DmaChannel + Send),
}

impl core::fmt::Debug for AddError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AddError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Display for AddError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "channel not added: {}", self.error)
    }
}

impl core::error::Error for AddError<'_> {}

/// For `?`: the channel is dropped with the error (as before it came back).
impl From<AddError<'_>> for RegistryError {
    fn from(e: AddError<'_>) -> RegistryError {
        e.error
    }
}
