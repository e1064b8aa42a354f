//! Plugin key-value state. Writes of a call go to a layer that is kept only if the call
//! succeeds; the caller decides when the kept writes reach RocksDB. Contribution ingest
//! commits them in the batch's own write, so a refused batch leaves no state behind.
//!
//! Each plugin's state size (keys and values, in bytes) is kept beside it and checked
//! against the plugin's limit as it writes. Two batches committing at once for the same
//! plugin can each count from the same starting size, so the figure is a bound kept to
//! within one batch's writes, not an exact tally.

use std::collections::BTreeMap;

use crate::store::{Batch, Store, StoreError, CF_META, CF_PLUGIN_STATE};

/// Writes not yet in RocksDB, per plugin: `None` deletes.
#[derive(Debug, Default, Clone)]
pub struct StateChanges {
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// Per plugin, how many bytes the writes add to its state (negative: remove).
    growth: BTreeMap<String, i64>,
}

fn size_key(plugin: &str) -> String {
    format!("plugin-state-size/{plugin}")
}

/// The recorded size of `plugin`'s state, in bytes.
pub(crate) fn stored_size(store: &Store, plugin: &str) -> Result<u64, StoreError> {
    Ok(store
        .get(CF_META, size_key(plugin).as_bytes())?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_le_bytes))
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

    /// Records a write that changes the plugin's state size by `growth` bytes.
    pub(crate) fn set(&mut self, plugin: &str, key: Vec<u8>, value: Option<Vec<u8>>, growth: i64) {
        self.writes.insert((plugin.to_string(), key), value);
        *self.growth.entry(plugin.to_string()).or_default() += growth;
    }

    pub(crate) fn growth(&self, plugin: &str) -> i64 {
        self.growth.get(plugin).copied().unwrap_or(0)
    }

    /// Adds `newer` on top of these changes.
    pub fn merge(&mut self, newer: StateChanges) {
        if newer.writes.is_empty() && newer.growth.is_empty() {
            return;
        }
        self.writes.extend(newer.writes);
        for (plugin, g) in newer.growth {
            *self.growth.entry(plugin).or_default() += g;
        }
    }

    /// Puts the changes and the plugins' new state sizes into `batch`, to commit with
    /// whatever else it holds.
    pub fn write_to(&self, store: &Store, batch: &mut Batch<'_>) -> Result<(), StoreError> {
        for ((plugin, key), value) in &self.writes {
            let k = state_key(plugin, key);
            match value {
                Some(v) => batch.put(CF_PLUGIN_STATE, k, v),
                None => batch.delete(CF_PLUGIN_STATE, k),
            }
        }
        for (plugin, growth) in &self.growth {
            let size = (stored_size(store, plugin)? as i64 + growth).max(0) as u64;
            batch.put(CF_META, size_key(plugin), size.to_le_bytes());
        }
        Ok(())
    }

    /// Commits the changes on their own.
    pub fn commit(&self, store: &Store) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let mut batch = store.batch();
        self.write_to(store, &mut batch)?;
        batch.commit()
    }
}

/// Reads state of one plugin: this call's writes, then earlier uncommitted ones, then
/// RocksDB.
pub(crate) struct StateView {
    pub earlier: StateChanges,
    pub call: StateChanges,
}

impl StateView {
    pub fn get(
        &self,
        store: &Store,
        plugin: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self
            .call
            .get(plugin, key)
            .or_else(|| self.earlier.get(plugin, key))
        {
            return Ok(v.clone());
        }
        store.get(CF_PLUGIN_STATE, &state_key(plugin, key))
    }
}
