//! What a plugin instance's store holds, and the host capabilities it may call. Each
//! capability checks the grant first: an ungranted one fails the call, naming itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::bindings::{config, http, kv, log, signer, types};
use super::manifest::{Capability, Grant, Limits};
use super::state::StateView;
use crate::identity::Key;
use crate::store::Store as Db;

/// Most bytes of a plugin's stderr kept to explain a trap (a Rust panic's message).
const STDERR_KEPT: usize = 4096;
/// Most log lines one call may write, and their length; past it lines are dropped.
const LOG_LINES: u32 = 200;
const LOG_LINE_BYTES: usize = 2048;
/// Largest response body the `http` capability hands a plugin.
const HTTP_BODY_MAX: usize = 16 << 20;

/// Clocks that always read zero: without the `clock` capability a plugin cannot tell time,
/// which keeps validators and policies replayable.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Everything an instance's store holds.
pub struct HostState {
    pub(crate) plugin: Arc<str>,
    granted: Vec<Capability>,
    settings: Arc<BTreeMap<String, String>>,
    http_allow: Arc<Vec<String>>,
    signer: Option<Arc<Key>>,
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    memory_cap: usize,
    kv_cap: usize,
    /// Set when the instance asked for more memory than its cap.
    pub(crate) memory_exceeded: bool,
    /// Set when the instance used a capability it was not granted.
    pub(crate) denied: Option<&'static str>,
    /// Key-value state during a call.
    pub(crate) state: Option<StateView>,
    /// Where committed key-value state is read from.
    db: Arc<Db>,
    log_lines: u32,
    /// Validator contexts this instance was configured with, oldest first, kept in step
    /// with the SDK's own list (the same cap, the same eviction).
    contexts: Vec<u64>,
    /// The buffer a validator's batches are packed into for this instance, kept between
    /// calls so that packing reuses memory earlier batches touched.
    pub(crate) packing: Vec<u8>,
    /// The validator context of the last call: what it was computed from, and its id.
    pub(crate) last_context: Option<(super::validator::ContextKey, u64)>,
}

/// Contexts an instance keeps, as the SDK does.
const MAX_CONTEXTS: usize = 64;

/// What every instance of one plugin shares.
#[derive(Clone)]
pub struct HostConfig {
    pub plugin: Arc<str>,
    pub granted: Vec<Capability>,
    pub grant: Grant,
    pub limits: Limits,
    pub settings: Arc<BTreeMap<String, String>>,
    pub signer: Option<Arc<Key>>,
    pub db: Arc<Db>,
}

impl HostState {
    pub fn new(config: &HostConfig) -> wasmtime::Result<Self> {
        let stderr = MemoryOutputPipe::new(STDERR_KEPT);
        let mut wasi = WasiCtx::builder();
        // Nothing of the host reaches the plugin: no arguments, environment, stdin, network.
        wasi.stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if !config.granted.contains(&Capability::Clock) {
            wasi.wall_clock(Frozen).monotonic_clock(Frozen);
        }
        if config.granted.contains(&Capability::Filesystem) {
            if let Some(dir) = &config.grant.filesystem {
                wasi.preopened_dir(dir, "/ledger", wasmtime_wasi::FsPerms::ReadWrite)?;
            }
        }
        Ok(Self {
            plugin: config.plugin.clone(),
            granted: config.granted.clone(),
            settings: config.settings.clone(),
            http_allow: Arc::new(config.grant.http_allow.clone()),
            signer: config.signer.clone(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            stderr,
            memory_cap: (config.limits.memory_mb as usize) << 20,
            kv_cap: (config.limits.kv_mb as usize) << 20,
            memory_exceeded: false,
            denied: None,
            state: None,
            db: config.db.clone(),
            log_lines: 0,
            contexts: Vec::new(),
            packing: Vec::new(),
            last_context: None,
        })
    }

    pub(crate) fn is_configured(&self, context: u64) -> bool {
        self.contexts.contains(&context)
    }

    pub(crate) fn configured(&mut self, context: u64) {
        self.contexts.retain(|c| *c != context);
        if self.contexts.len() >= MAX_CONTEXTS {
            self.contexts.remove(0);
        }
        self.contexts.push(context);
    }

    /// Clears what one call leaves behind, before the next.
    pub(crate) fn begin_call(&mut self) {
        self.denied = None;
        self.log_lines = 0;
    }

    /// The plugin's stderr so far (a panic message, usually).
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }

    fn require(&mut self, capability: Capability) -> wasmtime::Result<()> {
        if self.granted.contains(&capability) {
            Ok(())
        } else {
            self.denied = Some(capability.name());
            Err(wasmtime::Error::msg(format!(
                "capability {} is not granted to plugin {}",
                capability.name(),
                self.plugin
            )))
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            // Trap rather than fail the grow: a guest that cannot allocate aborts anyway,
            // and this way the error says why.
            self.memory_exceeded = true;
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} MiB reached",
                self.memory_cap >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.require(Capability::Log)?;
        self.log_lines += 1;
        if self.log_lines > LOG_LINES {
            return Ok(());
        }
        let mut message = message;
        if message.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.require(Capability::Config)?;
        Ok(self.settings.get(&key).cloned())
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.require(Capability::Kv)?;
        let plugin = self.plugin.clone();
        match &self.state {
            Some(state) => Ok(state.get(&self.db, &plugin, &key)?),
            None => Ok(None),
        }
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        self.require(Capability::Kv)?;
        let (plugin, cap) = (self.plugin.clone(), self.kv_cap as i64);
        let Some(state) = &mut self.state else {
            return Ok(Err("no state in this call".into()));
        };
        let old = state
            .get(&self.db, &plugin, &key)?
            .map_or(0, |v| (key.len() + v.len()) as i64);
        let growth = (key.len() + value.len()) as i64 - old;
        let size = super::state::stored_size(&self.db, &plugin)? as i64
            + state.earlier.growth(&plugin)
            + state.call.growth(&plugin);
        if growth > 0 && size + growth > cap {
            return Ok(Err(format!(
                "the plugin's state would grow past its limit of {} MiB",
                cap >> 20
            )));
        }
        state.call.set(&plugin, key, Some(value), growth);
        Ok(Ok(()))
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.require(Capability::Kv)?;
        let plugin = self.plugin.clone();
        if let Some(state) = &mut self.state {
            let old = state
                .get(&self.db, &plugin, &key)?
                .map_or(0, |v| (key.len() + v.len()) as i64);
            state.call.set(&plugin, key, None, -old);
        }
        Ok(())
    }
}

impl signer::Host for HostState {
    fn signing_address(&mut self) -> wasmtime::Result<Result<String, String>> {
        self.require(Capability::Signer)?;
        Ok(match &self.signer {
            Some(key) => Ok(key.address().to_checksum()),
            None => Err("the operator has configured no signer key (signer_key)".into()),
        })
    }

    fn sign_digest(&mut self, digest: Vec<u8>) -> wasmtime::Result<Result<Vec<u8>, String>> {
        self.require(Capability::Signer)?;
        let Some(key) = &self.signer else {
            return Ok(Err(
                "the operator has configured no signer key (signer_key)".into(),
            ));
        };
        let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
            return Ok(Err(format!("a digest is 32 bytes, not {}", digest.len())));
        };
        Ok(Ok(key.sign_digest(&digest).0.to_vec()))
    }
}

/// `host` or `host:port` of an http(s) URL.
fn authority(url: &str) -> Option<(&str, Option<&str>)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    Some(match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        _ => (authority, None),
    })
}

/// Whether `url` goes to a host on `allow` (`host` allows any port, `host:port` one).
pub(crate) fn allowed(url: &str, allow: &[String]) -> bool {
    let Some((host, port)) = authority(url) else {
        return false;
    };
    allow.iter().any(|entry| match entry.rsplit_once(':') {
        Some((h, p)) => h.eq_ignore_ascii_case(host) && Some(p) == port,
        None => entry.eq_ignore_ascii_case(host),
    })
}

impl http::Host for HostState {
    fn send(&mut self, request: http::Request) -> wasmtime::Result<Result<http::Response, String>> {
        self.require(Capability::Http)?;
        if !allowed(&request.url, &self.http_allow) {
            return Ok(Err(format!(
                "{} is not on this plugin's allow-list",
                request.url
            )));
        }
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return Ok(Err(format!("{:?} is not an HTTP method", request.method)));
        };
        let client = match reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut builder = client.request(method, &request.url).body(request.body);
        for header in request.headers {
            builder = builder.header(header.name, header.value);
        }
        let response = match builder.send() {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| http::Header {
                name: n.to_string(),
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
            })
            .collect();
        let body = match response.bytes() {
            Ok(b) if b.len() <= HTTP_BODY_MAX => b.to_vec(),
            Ok(b) => {
                return Ok(Err(format!(
                    "response body of {} bytes is too large",
                    b.len()
                )))
            }
            Err(e) => return Ok(Err(e.to_string())),
        };
        Ok(Ok(http::Response {
            status,
            headers,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_hosts_and_ports_exactly() {
        let allow = vec!["example.com".to_string(), "127.0.0.1:8545".to_string()];
        assert!(allowed("https://example.com/x", &allow));
        assert!(allowed("http://EXAMPLE.com:8080/", &allow));
        assert!(allowed("http://127.0.0.1:8545", &allow));
        assert!(!allowed("http://127.0.0.1:8546", &allow));
        assert!(!allowed("https://example.com.evil.net/", &allow));
        assert!(!allowed("https://user@example.com/", &allow));
        assert!(!allowed("file:///etc/passwd", &allow));
    }
}
