//! The reloadable state: what one load of the config decides, swapped whole by a reload, and
//! the reload itself (what may change without a restart, and what a reload refuses).

use super::*;

/// Where a reload reads the config from (the file and the process environment).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// What one load of the config decides.
pub(crate) struct State {
    pub(super) config: Arc<Config>,
    pub(super) access: Access,
    pub(super) auth: Auth,
    /// One upstream pool per region.
    pub(super) forwarders: [Forwarder; 3],
    /// Each operation's token plan for a request that names no dataElements, decided on first
    /// use (it follows from this config alone), so the request path clones an `Arc` instead
    /// of building the plan's strings again. Plans naming the request's own path are not kept.
    pub(super) plans: Box<[OnceLock<TokenPlan>]>,
    /// The document host's client (report downloads, feed uploads): no redirects, and no
    /// header of SP-API's.
    pub(super) documents_http: reqwest::Client,
}

impl State {
    /// The token plan for a request to `op` at `path` naming `requested` dataElements, if any.
    pub(super) fn plan(
        &self,
        op: Option<&'static Operation>,
        path: &str,
        requested: Option<&str>,
    ) -> Result<TokenPlan, ProxyError> {
        let config = &self.config;
        let decide = || {
            auth::plan(
                op,
                path,
                requested,
                op.and_then(|o| config.operations.get(&o.index))
                    .and_then(|s| s.data_elements.as_deref()),
                op.map_or(config.restricted_data, |o| config.restricted_data_for(o)),
            )
        };
        match op {
            Some(o) if requested.is_none() && !auth::plan_depends_on_path(o) => {
                let Some(slot) = self.plans.get(o.index) else {
                    return decide();
                };
                if let Some(plan) = slot.get() {
                    return Ok(plan.clone());
                }
                let plan = decide()?;
                Ok(slot.get_or_init(|| plan).clone())
            }
            _ => decide(),
        }
    }

    /// The state `config` describes, reusing what `previous` already holds where the config
    /// did not change it (tokens, upstream connections).
    pub(super) fn new(
        config: Config,
        limiter: &Arc<Limiter>,
        slots: &Arc<forward::UpstreamSlots>,
        previous: Option<&State>,
        tokens: Option<Arc<dyn crate::auth::store::TokenStore>>,
    ) -> Result<State, ConfigError> {
        let auth = match previous {
            Some(p) => p.auth.reload(&config)?,
            None => {
                let http = forward::http_client(&config).map_err(|e| ConfigError::Invalid {
                    key: "(http client)".into(),
                    problem: format!("cannot build the HTTP client: {e}"),
                })?;
                Auth::new(&config, http, Arc::clone(limiter), tokens)?
            }
        };
        let forwarder = |region: Region| -> Result<Forwarder, ConfigError> {
            let endpoint = config.endpoint(region);
            if let Some(p) = previous {
                let old = &p.forwarders[region.index()];
                if p.config.endpoint(region) == endpoint && p.config.timeouts == config.timeouts {
                    return Ok(old.clone());
                }
            }
            Forwarder::new(&config, endpoint, Arc::clone(slots)).map_err(|e| ConfigError::Invalid {
                key: format!("endpoints.{}", region.name()),
                problem: format!("cannot build the upstream client: {e}"),
            })
        };
        let documents_http = forward::http_client(&config).map_err(|e| ConfigError::Invalid {
            key: "(http client)".into(),
            problem: format!("cannot build the document host's client: {e}"),
        })?;
        Ok(State {
            documents_http,
            plans: Catalog::builtin()
                .operations()
                .iter()
                .map(|_| OnceLock::new())
                .collect(),
            access: Access::new(&config),
            forwarders: [
                forwarder(Region::Na)?,
                forwarder(Region::Eu)?,
                forwarder(Region::Fe)?,
            ],
            auth,
            config: Arc::new(config),
        })
    }
}

impl Proxy {
    /// The config in force now.
    pub fn current_config(&self) -> Arc<Config> {
        Arc::clone(&self.state.load().config)
    }

    /// Lets `POST /_proxy/reload` and [`Proxy::reload`] read the config again from `source`.
    pub fn with_source(mut self, source: ConfigSource) -> Proxy {
        self.source = Some(source);
        self
    }

    /// Reads the config again and, if it is valid, applies it without dropping a request:
    /// new sellers are served, removed ones are not, unchanged ones keep their tokens. If it is
    /// not valid, nothing changes and the error says why.
    pub fn reload(&self) -> Result<String, ConfigError> {
        let Some(source) = &self.source else {
            return Err(ConfigError::Invalid {
                key: "(reload)".into(),
                problem: "this proxy was not started from a config it can read again".into(),
            });
        };
        // A config read again: the sellers kept in Redis join it here (onboarding hands
        // `apply` a config that has them already).
        let config = super::with_shared_sellers(source()?);
        self.apply(config)
    }

    /// Applies a new, valid config (what [`Proxy::reload`] does after reading it).
    pub fn apply(&self, config: Config) -> Result<String, ConfigError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        config.check_exposure()?;
        let old = self.state.load_full();
        self.check_reload(&old.config, &config)?;
        let restart_only = [
            ("listen", old.config.listen != config.listen),
            (
                "max_connections",
                old.config.max_connections != config.max_connections,
            ),
            ("h2c", old.config.h2c != config.h2c),
            (
                "shared_state",
                old.config.shared_state != config.shared_state,
            ),
            ("replicas", old.config.replicas != config.replicas),
            (
                "timeouts.header_read / timeouts.client_idle / timeouts.shutdown_grace",
                old.config.timeouts.header_read != config.timeouts.header_read
                    || old.config.timeouts.client_idle != config.timeouts.client_idle
                    || old.config.timeouts.shutdown_grace != config.timeouts.shutdown_grace,
            ),
        ];
        for (key, changed) in restart_only {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the config, but applies only after a restart"
                );
            }
        }
        let state = State::new(config, &self.limiter, &self.slots, Some(&old), None)?;
        let names =
            |c: &Config| -> Vec<String> { c.sellers.iter().map(|s| s.name.clone()).collect() };
        let (before, after) = (names(&old.config), names(&state.config));
        let added: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
        let removed: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
        let summary = format!(
            "reloaded: {} seller(s); added: {}; removed: {}",
            after.len(),
            list(&added),
            list(&removed)
        );
        let config = Arc::clone(&state.config);
        self.limiter
            .reconfigure(limiter::Settings::from_config(&config), |key| {
                key.seller
                    .as_deref()
                    .is_none_or(|name| config.seller(name).is_some())
            });
        self.state.store(Arc::new(state));
        tracing::info!("{summary}");
        Ok(summary)
    }

    /// What a reload may not do, whatever the new file says: leave a public socket without
    /// keys, remove every key, or remove every seller. An editor's half-written or empty file
    /// looks exactly like that; a restart can still do it on purpose.
    pub(super) fn check_reload(&self, old: &Config, new: &Config) -> Result<(), ConfigError> {
        if let Some(bound) = self.bound.get() {
            if new.inbound_keys.is_empty() && !bound.ip().is_loopback() {
                return Err(ConfigError::Invalid {
                    key: "inbound_keys".into(),
                    problem: format!(
                        "the proxy is listening on {bound}, which is not a loopback address, so \
                         clients must keep presenting a key; a new `listen` applies only after \
                         a restart"
                    ),
                });
            }
        }
        if !old.inbound_keys.is_empty() && new.inbound_keys.is_empty() {
            return Err(ConfigError::Invalid {
                key: "inbound_keys".into(),
                problem: "the new config has no key, so it would let any client in; a reload \
                          never removes every key (restart to do that)"
                    .into(),
            });
        }
        if !old.sellers.is_empty() && new.sellers.is_empty() {
            return Err(ConfigError::Invalid {
                key: "sellers".into(),
                problem: "the new config has no seller (an empty or half-written file?); a \
                          reload never removes every seller (restart to do that)"
                    .into(),
            });
        }
        Ok(())
    }
}
