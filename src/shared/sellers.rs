//! Sellers added by onboarding, kept in Redis when replicas share state (`shared_state`): one
//! hash, `spapi-proxy:sellers`, a field per seller, each value sealed like the tokens
//! ([`super::tokens::Sealer`], the field's name as associated data). Read when the config is
//! loaded (start and reload), so a plain, short, synchronous connection is used.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tokens::Sealer;
use super::PREFIX;
use crate::config::stored::StoredSeller;
use crate::config::{Region, SharedState};
use crate::secret::Secret;

/// Connect and command timeout.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct Sealed {
    refresh_token: String,
    region: String,
    selling_partner_id: Option<String>,
    authorized_at: String,
}

fn key() -> String {
    format!("{PREFIX}sellers")
}

fn connect(shared: &SharedState) -> Result<redis::Connection, String> {
    super::tls_provider();
    let client = redis::Client::open(shared.url.expose()).map_err(|e| super::describe(&e))?;
    let conn = client
        .get_connection_with_timeout(TIMEOUT)
        .map_err(|e| super::describe(&e))?;
    conn.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| super::describe(&e))?;
    Ok(conn)
}

/// Every stored seller. Values that do not open under this key are skipped (and named).
pub fn load(shared: &SharedState) -> Result<Vec<StoredSeller>, String> {
    let sealer = Sealer::new(&shared.key);
    let mut conn = connect(shared)?;
    let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(key())
        .query(&mut conn)
        .map_err(|e| super::describe(&e))?;
    let mut out = Vec::new();
    for (name, value) in all {
        let opened = sealer
            .open_bytes(&format!("seller:{name}"), &value)
            .and_then(|plain| serde_json::from_slice::<Sealed>(&plain).ok());
        let Some(s) = opened else {
            tracing::warn!(seller = %name, "a stored seller in the shared state does not open with shared_state_key; skipped");
            continue;
        };
        let Ok(region) = Region::parse("region", &s.region) else {
            continue;
        };
        out.push(StoredSeller {
            name,
            refresh_token: Secret::new(s.refresh_token),
            region,
            selling_partner_id: s.selling_partner_id,
            authorized_at: s.authorized_at,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Stores (replaces) one seller.
pub fn put(shared: &SharedState, seller: &StoredSeller) -> Result<(), String> {
    let sealer = Sealer::new(&shared.key);
    let plain = serde_json::to_vec(&Sealed {
        refresh_token: seller.refresh_token.expose().to_string(),
        region: seller.region.name().to_string(),
        selling_partner_id: seller.selling_partner_id.clone(),
        authorized_at: seller.authorized_at.clone(),
    })
    .map_err(|e| e.to_string())?;
    let sealed = sealer
        .seal_bytes(&format!("seller:{}", seller.name), &plain)
        .map_err(|e| e.0)?;
    let mut conn = connect(shared)?;
    redis::cmd("HSET")
        .arg(key())
        .arg(&seller.name)
        .arg(sealed)
        .query::<()>(&mut conn)
        .map_err(|e| super::describe(&e))
}

/// Deletes one seller.
pub fn remove(shared: &SharedState, name: &str) -> Result<(), String> {
    let mut conn = connect(shared)?;
    redis::cmd("HDEL")
        .arg(key())
        .arg(name)
        .query::<()>(&mut conn)
        .map_err(|e| super::describe(&e))
}
