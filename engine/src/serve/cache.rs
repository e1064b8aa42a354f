//! Adapters held in memory: a byte budget and a rank limit, least-recently-used eviction of
//! what is not pinned, pinning for adapters that must stay. An adapter a running request uses
//! stays alive through its `Arc` even when evicted; the budget counts what the cache holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::lora::Lora;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("rank {rank} is above the server's limit of {limit}")]
    Rank { rank: usize, limit: usize },
    #[error("the adapter takes {bytes} bytes; the adapter budget is {budget}")]
    TooLarge { bytes: usize, budget: usize },
    #[error("the adapter takes {bytes} bytes and pinned adapters hold {pinned} of the {budget}-byte budget")]
    Full {
        bytes: usize,
        pinned: usize,
        budget: usize,
    },
}

/// An adapter in the cache, as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CachedAdapter {
    pub name: String,
    /// The base it was checked against (weights hash).
    pub base: String,
    pub rank: usize,
    pub targets: Vec<String>,
    pub bytes: usize,
    pub pinned: bool,
    /// Where it was read from: a registry model id or a directory.
    pub source: String,
}

struct Entry {
    lora: Arc<Lora>,
    info: CachedAdapter,
    used: u64,
}

struct Inner {
    entries: HashMap<String, Entry>,
    clock: u64,
}

pub struct AdapterCache {
    pub budget: usize,
    pub max_rank: usize,
    inner: Mutex<Inner>,
}

impl AdapterCache {
    pub fn new(budget: usize, max_rank: usize) -> Self {
        Self {
            budget,
            max_rank,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                clock: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The adapter, marked as just used.
    pub fn get(&self, name: &str) -> Option<(Arc<Lora>, CachedAdapter)> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let e = inner.entries.get_mut(name)?;
        e.used = now;
        Some((e.lora.clone(), e.info.clone()))
    }

    /// Checks an adapter against the limits before anything is read into the cache.
    pub fn admissible(&self, rank: usize) -> Result<(), CacheError> {
        if rank > self.max_rank {
            return Err(CacheError::Rank {
                rank,
                limit: self.max_rank,
            });
        }
        Ok(())
    }

    /// Holds `lora` under `info.name`, evicting the least recently used unpinned adapters
    /// until it fits. Replaces an adapter of the same name.
    pub fn insert(
        &self,
        lora: Arc<Lora>,
        mut info: CachedAdapter,
    ) -> Result<Vec<String>, CacheError> {
        self.admissible(lora.rank)?;
        let bytes = lora.bytes();
        info.bytes = bytes;
        if bytes > self.budget {
            return Err(CacheError::TooLarge {
                bytes,
                budget: self.budget,
            });
        }
        let mut inner = self.lock();
        let held = |inner: &Inner| -> usize {
            inner
                .entries
                .values()
                .filter(|e| e.info.name != info.name)
                .map(|e| e.info.bytes)
                .sum()
        };
        let pinned: usize = inner
            .entries
            .values()
            .filter(|e| e.info.pinned && e.info.name != info.name)
            .map(|e| e.info.bytes)
            .sum();
        if pinned + bytes > self.budget {
            return Err(CacheError::Full {
                bytes,
                pinned,
                budget: self.budget,
            });
        }
        let mut evicted = Vec::new();
        while held(&inner) + bytes > self.budget {
            let victim = inner
                .entries
                .values()
                .filter(|e| !e.info.pinned && e.info.name != info.name)
                .min_by_key(|e| e.used)
                .map(|e| e.info.name.clone());
            match victim {
                Some(v) => {
                    inner.entries.remove(&v);
                    evicted.push(v);
                }
                None => break,
            }
        }
        inner.clock += 1;
        let used = inner.clock;
        inner
            .entries
            .insert(info.name.clone(), Entry { lora, info, used });
        Ok(evicted)
    }

    pub fn remove(&self, name: &str) -> Option<CachedAdapter> {
        self.lock().entries.remove(name).map(|e| e.info)
    }

    pub fn set_pinned(&self, name: &str, pinned: bool) -> Option<CachedAdapter> {
        let mut inner = self.lock();
        let e = inner.entries.get_mut(name)?;
        e.info.pinned = pinned;
        Some(e.info.clone())
    }

    /// Every adapter held, most recently used first.
    pub fn list(&self) -> Vec<CachedAdapter> {
        let inner = self.lock();
        let mut entries: Vec<&Entry> = inner.entries.values().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.used));
        entries.into_iter().map(|e| e.info.clone()).collect()
    }

    pub fn bytes(&self) -> usize {
        self.lock().entries.values().map(|e| e.info.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::lora::Pair;

    fn lora(rank: usize, floats: usize) -> Arc<Lora> {
        let mut layer: [Option<Pair>; 7] = Default::default();
        layer[0] = Some(Pair {
            a: vec![0.0; floats / 2],
            b: vec![0.0; floats / 2],
        });
        Arc::new(Lora {
            rank,
            scale: 1.0,
            layers: vec![layer],
            targets: vec!["q_proj".into()],
        })
    }

    fn info(name: &str, pinned: bool) -> CachedAdapter {
        CachedAdapter {
            name: name.into(),
            base: "b".into(),
            rank: 0,
            targets: vec![],
            bytes: 0,
            pinned,
            source: "test".into(),
        }
    }

    #[test]
    fn evicts_the_least_recently_used_and_keeps_pinned_ones() {
        // Each adapter is 400 bytes; the budget holds two.
        let cache = AdapterCache::new(900, 16);
        cache
            .insert(lora(4, 100), info("pinned", true))
            .expect("pinned");
        cache.insert(lora(4, 100), info("a", false)).expect("a");
        let evicted = cache.insert(lora(4, 100), info("b", false)).expect("b");
        assert_eq!(evicted, vec!["a".to_string()]);
        assert!(cache.get("a").is_none() && cache.get("pinned").is_some());
        // "c" evicts "b", the only unpinned one.
        cache.insert(lora(4, 100), info("c", false)).expect("c");
        assert!(cache.get("b").is_none());
        assert_eq!(cache.bytes(), 800);
        assert_eq!(
            cache.insert(lora(32, 100), info("d", false)),
            Err(CacheError::Rank {
                rank: 32,
                limit: 16
            })
        );
        assert!(matches!(
            cache.insert(lora(4, 1000), info("e", false)),
            Err(CacheError::TooLarge { .. })
        ));
        cache.set_pinned("c", true).expect("pin c");
        assert!(matches!(
            cache.insert(lora(4, 100), info("f", false)),
            Err(CacheError::Full { .. })
        ));
        assert!(cache.remove("c").is_some());
        cache
            .insert(lora(4, 100), info("f", false))
            .expect("room again");
    }
}
