//! The active policy holder: swapped atomically as a whole, so every
//! decision takes one `Arc` of one policy.

#[cfg(test)]
use std::sync::Mutex;
use std::sync::{Arc, RwLock};

use super::CompiledPolicy;

/// The policy in force; swapped atomically as a whole.
#[derive(Debug)]
pub struct ActivePolicy {
    current: RwLock<Arc<CompiledPolicy>>,
    /// Test hook ([`ActivePolicy::swapping_on_every_load`]): the policy the
    /// next load swaps in.
    #[cfg(test)]
    swap_on_load: Option<Mutex<Arc<CompiledPolicy>>>,
}

impl ActivePolicy {
    /// Start with `p`.
    pub fn new(p: CompiledPolicy) -> Self {
        Self {
            current: RwLock::new(Arc::new(p)),
            #[cfg(test)]
            swap_on_load: None,
        }
    }
    /// A policy that swaps itself on every [`ActivePolicy::current`]: the
    /// first load returns `first` and swaps in `second`, the next returns
    /// `second` and swaps `first` back in, and so on. A rollout landing
    /// between any two loads, made deterministic.
    #[cfg(test)]
    pub fn swapping_on_every_load(first: CompiledPolicy, second: CompiledPolicy) -> Self {
        Self {
            current: RwLock::new(Arc::new(first)),
            swap_on_load: Some(Mutex::new(Arc::new(second))),
        }
    }
    /// The current policy.
    pub fn current(&self) -> Arc<CompiledPolicy> {
        let p = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        #[cfg(test)]
        if let Some(next) = &self.swap_on_load {
            let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
            let upcoming = std::mem::replace(&mut *next, Arc::clone(&p));
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = upcoming;
        }
        p
    }
    /// Replace the policy.
    pub fn swap(&self, p: CompiledPolicy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }
}
