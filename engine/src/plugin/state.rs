//! Plugin key-value state. Writes of a call go to a layer that is kept only if the call
//! succeeds; the caller decides when the kept writes reach RocksDB. Contribution ingest
//! commits them in the batch's own write, so a refused batch leaves no state behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::store::{Batch, Store, StoreError, CF_PLUGIN_STATE};

/// Writes not yet in RocksDB, per plugin: `None` deletes.
#[derive(Debug, Default, Clone)]
pub struct StateChanges {
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
}

pub(crate) fn state_key(plugin: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(plugin.len() + 1 + key.len());
    k.extend_from_slice(plugin.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

impl StateChanges {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub(crate) fn get(&self, plugin: &str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.writes.get(&(plugin.to_string(), key.to_vec()))
    }

    pub(crate) fn set(&mut self, plugin: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.writes.insert((plugin.to_string(), key), value);
    }

    /// Adds `newer` on top of these changes.
    pub fn merge(&mut self, newer: StateChanges) {
        self.writes.extend(newer.writes);
    }

    /// Puts the changes into `batch`, to commit with whatever else it holds.
    pub fn write_to(&self, batch: &mut Batch<'_>) {
        for ((plugin, key), value) in &self.writes {
            let k = state_key(plugin, key);
            match value {
                Some(v) => batch.put(CF_PLUGIN_STATE, k, v),
                None => batch.delete(CF_PLUGIN_STATE, k),
            }
        }
    }

    /// Commits the changes on their own.
    pub fn commit(&self, store: &Store) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let mut batch = store.batch();
        self.write_to(&mut batch);
        batch.commit()
    }
}

/// Reads state of one plugin: this call's writes, then earlier uncommitted ones, then
/// RocksDB.
pub(crate) struct StateView {
    pub store: Arc<Store>,
    pub earlier: StateChanges,
    pub call: StateChanges,
    pub written: usize,
}

impl StateView {
    pub fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self
            .call
            .get(plugin, key)
            .or_else(|| self.earlier.get(plugin, key))
        {
            return Ok(v.clone());
        }
        self.store.get(CF_PLUGIN_STATE, &state_key(plugin, key))
    }
}
