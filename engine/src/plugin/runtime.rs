//! One wasmtime engine for every plugin: components compiled once and cached as precompiled
//! artifacts, instances from `InstancePre` on the pooling allocator, a few kept ready per
//! plugin, and every call under a deadline, a memory cap and an output cap.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Func, HasSelf, Instance, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use super::api_version;
use super::bindings::{ledger_adapter, packed_validator, reward_policy, validator};
use super::host::{HostConfig, HostState};
use super::manifest::{Capability, Grants, Limits, Manifest, PluginKind};
use super::state::{StateChanges, StateView};
use super::PluginError;
use crate::identity::Key;
use crate::store::Store as Db;

/// How often the epoch advances: the resolution of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The engine, its linkers and the artifact cache.
pub struct PluginRuntime {
    engine: Engine,
    validator: Linker<HostState>,
    reward_policy: Linker<HostState>,
    ledger_adapter: Linker<HostState>,
    cache_dir: PathBuf,
    maxima: Limits,
    db: Arc<Db>,
    ticking: Arc<AtomicBool>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

fn linker<F>(engine: &Engine, add_world: F) -> Result<Linker<HostState>, PluginError>
where
    F: FnOnce(&mut Linker<HostState>) -> wasmtime::Result<()>,
{
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::load("host", e))?;
    add_world(&mut linker).map_err(|e| PluginError::load("host", e))?;
    Ok(linker)
}

impl PluginRuntime {
    /// Starts the engine; precompiled components are cached under `cache_dir`.
    pub fn new(cache_dir: &Path, maxima: Limits, db: Arc<Db>) -> Result<Self, PluginError> {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(128)
            .total_core_instances(1024)
            .total_memories(128)
            .total_tables(1024)
            // A discarded instance's pages go back to the kernel in batches: one madvise and
            // one TLB shootdown for many, instead of one each.
            .decommit_batch_size(32)
            .max_memory_size((maxima.memory_mb as usize) << 20);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // No plugin world uses the async ABI; without it a call costs a third as much.
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(|e| PluginError::load("host", e))?;
        let ticking = Arc::new(AtomicBool::new(true));
        {
            let (engine, ticking) = (engine.clone(), ticking.clone());
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while ticking.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?;
        }
        std::fs::create_dir_all(cache_dir)?;
        Ok(Self {
            validator: linker(&engine, |l| {
                validator::Validator::add_to_linker::<_, HasSelf<HostState>>(l, |s| s)
            })?,
            reward_policy: linker(&engine, |l| {
                reward_policy::RewardPolicy::add_to_linker::<_, HasSelf<HostState>>(l, |s| s)
            })?,
            ledger_adapter: linker(&engine, |l| {
                ledger_adapter::LedgerAdapter::add_to_linker::<_, HasSelf<HostState>>(l, |s| s)
            })?,
            engine,
            cache_dir: cache_dir.to_path_buf(),
            maxima,
            db,
            ticking,
        })
    }

    pub fn maxima(&self) -> Limits {
        self.maxima
    }

    /// The artifact for `wasm` from the cache, or compiled and cached.
    fn compile(&self, id: &str, wasm: &[u8]) -> Result<Component, PluginError> {
        let mut compat = DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let name = format!(
            "{}-{:016x}.cwasm",
            blake3::hash(wasm).to_hex(),
            compat.finish()
        );
        let path = self.cache_dir.join(name);
        if path.exists() {
            match load_artifact(&self.engine, &path) {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(plugin = id, error = %e, "discarding a cached artifact that does not load");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(&self.engine, wasm).map_err(|e| {
            PluginError::load(id, format!("not a valid component: {}", e.root_cause()))
        })?;
        let bytes = component
            .serialize()
            .map_err(|e| PluginError::load(id, e))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(component)
    }

    /// Checks `wasm` against its manifest and makes it ready to call.
    pub fn load(
        &self,
        manifest: Manifest,
        wasm: &[u8],
        grants: &Grants,
    ) -> Result<LoadedPlugin, PluginError> {
        let id = manifest.id.clone();
        let component = self.compile(&id, wasm)?;
        let ty = component.component_type();
        let wanted = api_version::export_of(manifest.kind);
        let export = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .find(|name| name.split('@').next() == Some(wanted));
        let Some(export) = export else {
            return Err(PluginError::load(
                &id,
                format!(
                    "its manifest says {}, but it does not export {wanted}",
                    manifest.kind
                ),
            ));
        };
        let version = api_version::stamped(wasm)
            .or_else(|| api_version::of_export(&export).map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        if api_version::check(&version).is_err() {
            return Err(PluginError::UnsupportedApi {
                plugin: id,
                found: version,
                supported: api_version::SUPPORTED.into(),
            });
        }
        for (name, _) in ty.imports(&self.engine) {
            if let Some(capability) = Capability::of_import(name) {
                if !manifest.capabilities.contains(&capability) {
                    return Err(PluginError::load(
                        &id,
                        format!(
                            "it imports {name}, but its manifest does not request the {} capability",
                            capability.name()
                        ),
                    ));
                }
            }
        }
        let grant = grants.grant(&id);
        let granted = grants.granted(&manifest);
        let limits = manifest.limits.within(self.maxima);
        let settings = grant
            .config
            .iter()
            .map(|(k, v)| Ok((k.clone(), serde_json::to_string(v)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| PluginError::load(&id, e))?;
        let signer = match (&grant.signer_key, granted.contains(&Capability::Signer)) {
            (Some(path), true) => Some(Arc::new(
                Key::load(path).map_err(|e| PluginError::load(&id, e))?,
            )),
            _ => None,
        };
        if granted.contains(&Capability::Filesystem) && grant.filesystem.is_none() {
            return Err(PluginError::load(
                &id,
                "the filesystem capability is granted without a folder (filesystem = \"...\")",
            ));
        }
        let pre = match manifest.kind {
            PluginKind::Validator => {
                let packed = ty
                    .exports(&self.engine)
                    .any(|(name, _)| name.split('@').next() == Some(PACKED_VALIDATION));
                let pre = self.validator.instantiate_pre(&component);
                match pre {
                    // 0.1.2's world binds where the component exports `packed-validation`.
                    Ok(pre) if packed => packed_validator::ValidatorPre::new(pre.clone())
                        .map(Pre::PackedValidator)
                        .or_else(|_| validator::ValidatorPre::new(pre).map(Pre::Validator)),
                    Ok(pre) => validator::ValidatorPre::new(pre).map(Pre::Validator),
                    Err(e) => Err(e),
                }
            }
            PluginKind::RewardPolicy => self
                .reward_policy
                .instantiate_pre(&component)
                .and_then(reward_policy::RewardPolicyPre::new)
                .map(Pre::RewardPolicy),
            PluginKind::LedgerAdapter => self
                .ledger_adapter
                .instantiate_pre(&component)
                .and_then(ledger_adapter::LedgerAdapterPre::new)
                .map(Pre::LedgerAdapter),
        }
        .map_err(|e| PluginError::load(&id, format!("cannot be linked: {e:#}")))?;
        let host = HostConfig {
            plugin: id.as_str().into(),
            granted: granted.clone(),
            grant,
            limits,
            settings: Arc::new(settings),
            signer,
            db: self.db.clone(),
        };
        Ok(LoadedPlugin {
            api_version: version,
            hash: blake3::hash(wasm).to_hex().to_string(),
            manifest,
            limits,
            granted,
            engine: self.engine.clone(),
            pre,
            host,
            idle: Mutex::new(Vec::new()),
            instantiated: AtomicU64::new(0),
        })
    }
}

/// Loads a precompiled artifact this engine wrote.
// `Component::deserialize_file` trusts its input to be wasmtime's own output: a crafted file
// could run arbitrary code. The cache folder is in the operator's data directory and only
// this process writes it, from components it compiled itself; a file that does not match
// the engine (another wasmtime, other settings) is refused by wasmtime's own header check.
#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see above; the artifact was produced by `Component::serialize` of this engine.
    unsafe { Component::deserialize_file(engine, path) }
}

/// The interface 0.1.1 added for ledger adapters.
const CLAIMS_INTERFACE: &str = "tributary:plugins/claims@0.1.1";
/// 0.1.2's interface for validators, without its version.
const PACKED_VALIDATION: &str = "tributary:plugins/packed-validation";

enum Pre {
    Validator(validator::ValidatorPre<HostState>),
    PackedValidator(packed_validator::ValidatorPre<HostState>),
    RewardPolicy(reward_policy::RewardPolicyPre<HostState>),
    LedgerAdapter(ledger_adapter::LedgerAdapterPre<HostState>),
}

/// An instance's exports.
pub(crate) enum Bound {
    Validator(validator::Validator),
    /// A validator that also takes packed batches (0.1.2).
    PackedValidator(packed_validator::Validator),
    RewardPolicy(reward_policy::RewardPolicy),
    LedgerAdapter(LedgerBound),
}

/// A ledger adapter's exports: 0.1.0's `ledger`, and 0.1.1's `claims` where it has it.
pub(crate) struct LedgerBound {
    pub ledger: ledger_adapter::LedgerAdapter,
    /// `tributary:plugins/claims@0.1.1#claimed`.
    pub claimed: Option<Func>,
}

/// The export `interface#function` of `instance`, if it has it. A newer minor version's
/// interfaces are found this way, so older components load without them.
fn probe(
    store: &mut Store<HostState>,
    instance: &Instance,
    interface: &str,
    function: &str,
) -> Option<Func> {
    let iface = instance.get_export_index(&mut *store, None, interface)?;
    let func = instance.get_export_index(&mut *store, Some(&iface), function)?;
    instance.get_func(&mut *store, func)
}

/// An instance ready for a call.
struct Ready {
    store: Store<HostState>,
    bound: Bound,
}

/// A plugin ready to call.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    /// BLAKE3 of the component, hex.
    pub hash: String,
    /// The API version it was built for.
    pub api_version: String,
    /// The manifest's limits within the operator's maxima.
    pub limits: Limits,
    /// What it requested and the operator granted.
    pub granted: Vec<Capability>,
    engine: Engine,
    pre: Pre,
    host: HostConfig,
    idle: Mutex<Vec<Ready>>,
    instantiated: AtomicU64,
}

/// What a call answers, for the output cap.
pub(crate) trait OutputSize {
    fn output_size(&self) -> usize;
}

impl LoadedPlugin {
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// Whether it is a validator called with packed batches (0.1.2's `packed-validation`).
    pub fn takes_packed_batches(&self) -> bool {
        matches!(self.pre, Pre::PackedValidator(_))
    }

    /// Instances created so far: a trap discards one, and the next call makes another.
    pub fn instances_created(&self) -> u64 {
        self.instantiated.load(Ordering::Relaxed)
    }

    /// Makes an instance and drops it: what a call pays after a trap. For measurements.
    pub fn instantiate_once(&self) -> Result<(), PluginError> {
        self.instantiate().map(drop)
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.deadline_ms * 1000).div_ceil(EPOCH_TICK.as_micros() as u64) + 1
    }

    fn instantiate(&self) -> Result<Ready, PluginError> {
        let state = HostState::new(&self.host).map_err(|e| PluginError::load(self.id(), e))?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let bound = match &self.pre {
            Pre::Validator(pre) => pre.instantiate(&mut store).map(Bound::Validator),
            Pre::PackedValidator(pre) => pre.instantiate(&mut store).map(Bound::PackedValidator),
            Pre::RewardPolicy(pre) => pre.instantiate(&mut store).map(Bound::RewardPolicy),
            Pre::LedgerAdapter(pre) => pre.instance_pre().instantiate(&mut store).and_then(|i| {
                let ledger = ledger_adapter::LedgerAdapter::new(&mut store, &i)?;
                let claimed = probe(&mut store, &i, CLAIMS_INTERFACE, "claimed");
                Ok(Bound::LedgerAdapter(LedgerBound { ledger, claimed }))
            }),
        }
        .map_err(|e| self.classify("instantiate", &store, e))?;
        self.instantiated.fetch_add(1, Ordering::Relaxed);
        Ok(Ready { store, bound })
    }

    /// Names what stopped a failed call.
    fn classify(
        &self,
        call: &'static str,
        store: &Store<HostState>,
        error: wasmtime::Error,
    ) -> PluginError {
        let plugin = self.id().to_string();
        let data = store.data();
        if data.memory_exceeded {
            return PluginError::Memory {
                plugin,
                call,
                limit_mb: self.limits.memory_mb,
            };
        }
        if let Some(capability) = data.denied {
            return PluginError::Denied {
                plugin,
                call,
                capability,
            };
        }
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::Deadline {
                plugin,
                call,
                limit_ms: self.limits.deadline_ms,
            };
        }
        let stderr = data.stderr();
        let message = if stderr.is_empty() {
            format!("{}", error.root_cause())
        } else {
            // A Rust guest's panic message, which says more than `unreachable` does.
            format!("{} ({stderr})", error.root_cause())
        };
        PluginError::Trap {
            plugin,
            call,
            message,
        }
    }

    /// Runs `f` on an instance under the plugin's limits. Key-value writes of the call are
    /// added to `state` only if it succeeds; reads see `state` first. An instance whose call
    /// failed is discarded; the next call gets a fresh one.
    pub(crate) fn call<R: OutputSize>(
        &self,
        call: &'static str,
        state: &mut StateChanges,
        f: impl FnOnce(&mut Store<HostState>, &Bound) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, PluginError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut ready = match idle {
            Some(ready) => ready,
            None => self.instantiate()?,
        };
        // Key-value state is only lent to plugins that may use it.
        let lends_state = self.granted.contains(&Capability::Kv);
        {
            let store = &mut ready.store;
            store.set_epoch_deadline(self.deadline_ticks());
            let data = store.data_mut();
            data.begin_call();
            if lends_state {
                data.state = Some(StateView {
                    earlier: std::mem::take(state),
                    call: StateChanges::default(),
                });
            }
        }
        let outcome = f(&mut ready.store, &ready.bound);
        let written = match ready.store.data_mut().state.take() {
            Some(view) => {
                *state = view.earlier;
                Some(view.call)
            }
            None => None,
        };
        let answer = match outcome {
            Err(e) => return Err(self.classify(call, &ready.store, e)),
            Ok(answer) => answer,
        };
        let size = match &answer {
            Ok(r) => r.output_size(),
            Err(message) => message.len(),
        };
        let limit = (self.limits.output_kb as usize) << 10;
        if size > limit {
            // The instance is sound; only its answer is refused.
            self.give_back(ready);
            return Err(PluginError::Output {
                plugin: self.id().to_string(),
                call,
                size,
                limit_kb: self.limits.output_kb,
            });
        }
        self.give_back(ready);
        match answer {
            Ok(r) => {
                if let Some(written) = written {
                    state.merge(written);
                }
                Ok(r)
            }
            Err(message) => Err(PluginError::Failed {
                plugin: self.id().to_string(),
                call,
                message,
            }),
        }
    }

    fn give_back(&self, ready: Ready) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.limits.instances as usize {
            idle.push(ready);
        }
    }
}
