//! The environment overlay: every variable the proxy reads, read in one place. A variable wins
//! over the file's key; errors in its value name the variable, not the key.

/// Looks up an environment variable; tests pass a map instead of the process environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A value set in the environment, and the variable it came from.
#[derive(Debug, Clone)]
pub(super) struct FromEnv {
    pub var: &'static str,
    pub value: String,
}

/// What the environment sets. Names after the first are aliases other SP-API tools use
/// (python-sp-api's `LWA_APP_ID`, `LWA_CLIENT_SECRET`, `SP_API_REFRESH_TOKEN`).
#[derive(Debug, Default)]
pub(super) struct Overlay {
    pub listen: Option<FromEnv>,
    pub region: Option<FromEnv>,
    pub sandbox: Option<FromEnv>,
    pub endpoint: Option<FromEnv>,
    pub token_url: Option<FromEnv>,
    pub rdt_endpoint: Option<FromEnv>,
    pub rate_limit: Option<FromEnv>,
    pub proxy_keys: Option<FromEnv>,
    pub client_id: Option<FromEnv>,
    pub client_secret: Option<FromEnv>,
    pub next_client_secret: Option<FromEnv>,
    pub refresh_token: Option<FromEnv>,
    pub shared_state: Option<FromEnv>,
    pub shared_state_key: Option<FromEnv>,
    pub replicas: Option<FromEnv>,
}

impl Overlay {
    pub fn read(env: Env<'_>) -> Overlay {
        let first = |names: &[&'static str]| {
            names.iter().find_map(|&var| {
                env(var)
                    .filter(|v| !v.trim().is_empty())
                    .map(|value| FromEnv { var, value })
            })
        };
        Overlay {
            listen: first(&["SPAPI_LISTEN"]),
            region: first(&["SPAPI_REGION"]),
            sandbox: first(&["SPAPI_SANDBOX"]),
            endpoint: first(&["SPAPI_ENDPOINT"]),
            token_url: first(&["SPAPI_TOKEN_URL"]),
            rdt_endpoint: first(&["SPAPI_RDT_ENDPOINT"]),
            rate_limit: first(&["SPAPI_RATE_LIMIT"]),
            proxy_keys: first(&["SPAPI_PROXY_KEYS"]),
            client_id: first(&["SPAPI_CLIENT_ID", "LWA_APP_ID"]),
            client_secret: first(&["SPAPI_CLIENT_SECRET", "LWA_CLIENT_SECRET"]),
            next_client_secret: first(&["SPAPI_NEXT_CLIENT_SECRET"]),
            refresh_token: first(&["SPAPI_REFRESH_TOKEN", "SP_API_REFRESH_TOKEN"]),
            shared_state: first(&["SPAPI_SHARED_STATE"]),
            shared_state_key: first(&["SPAPI_SHARED_STATE_KEY"]),
            replicas: first(&["SPAPI_REPLICAS"]),
        }
    }
}
