//! The seller store (`sellers_file`): sellers added by onboarding (`/_proxy/oauth/*`), kept
//! apart from `proxy.toml` so that the proxy never rewrites the operator's own file. Read at
//! start and on every reload; written whole, atomically (a temporary file in the same
//! directory, written, fsynced, renamed over the old one, the directory fsynced), mode 0600:
//! a crash leaves the old file or the new one, never half of one.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, Region};
use crate::secret::Secret;

/// One stored seller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSeller {
    /// The name requests use.
    pub name: String,
    /// The refresh token LWA gave for it.
    pub refresh_token: Secret,
    /// Its region.
    pub region: Region,
    /// The merchant id Amazon named in the callback.
    pub selling_partner_id: Option<String>,
    /// When it was authorized (RFC 3339, UTC).
    pub authorized_at: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    sellers: std::collections::BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    refresh_token: String,
    region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    selling_partner_id: Option<String>,
    authorized_at: String,
}

const HEADER: &str =
    "# Sellers added through spapi-proxy's onboarding (/_proxy/oauth). Written by the proxy:\n\
# edit only while it is stopped. Holds refresh tokens: keep it mode 0600.\n\n";

/// The stored sellers `config` names: in Redis with `shared_state`, else in `sellers_file`.
/// Redis not answering is a WARN, not an error: the proxy goes on with the sellers of
/// `proxy.toml`, and the stored ones come back with the next reload.
pub fn load_for(config: &super::Config) -> Result<Vec<StoredSeller>, ConfigError> {
    if let Some(shared) = &config.shared_state {
        return Ok(crate::shared::sellers::load(shared).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the shared state did not answer; sellers added by onboarding are left out until the next reload");
            Vec::new()
        }));
    }
    match &config.sellers_file {
        Some(path) => load(path),
        None => Ok(Vec::new()),
    }
}

/// Whether `config` has somewhere to keep onboarded sellers.
pub fn available(config: &super::Config) -> bool {
    config.shared_state.is_some() || config.sellers_file.is_some()
}

/// Stores `seller` (replacing one of the same name) where `config` keeps them.
pub fn put_for(config: &super::Config, seller: &StoredSeller) -> Result<(), String> {
    if let Some(shared) = &config.shared_state {
        return crate::shared::sellers::put(shared, seller);
    }
    let path = config.sellers_file.as_deref().ok_or("no sellers_file")?;
    let mut all = load(path).map_err(|e| e.to_string())?;
    all.retain(|s| s.name != seller.name);
    all.push(seller.clone());
    save(path, &all).map_err(|e| format!("{}: {e}", path.display()))
}

/// Deletes the stored seller `name`.
pub fn remove_for(config: &super::Config, name: &str) -> Result<(), String> {
    if let Some(shared) = &config.shared_state {
        return crate::shared::sellers::remove(shared, name);
    }
    let path = config.sellers_file.as_deref().ok_or("no sellers_file")?;
    let mut all = load(path).map_err(|e| e.to_string())?;
    all.retain(|s| s.name != name);
    save(path, &all).map_err(|e| format!("{}: {e}", path.display()))
}

/// The sellers in `path`; none if the file does not exist.
pub fn load(path: &Path) -> Result<Vec<StoredSeller>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError::Io {
                file: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    let file: File = toml::from_str(&text).map_err(|e| {
        invalid(
            "sellers_file",
            format!("{}: {}", path.display(), e.message()),
        )
    })?;
    file.sellers
        .into_iter()
        .map(|(name, e)| {
            Ok(StoredSeller {
                region: Region::parse(&format!("sellers_file: sellers.{name}.region"), &e.region)?,
                name,
                refresh_token: Secret::new(e.refresh_token),
                selling_partner_id: e.selling_partner_id,
                authorized_at: e.authorized_at,
            })
        })
        .collect()
}

/// Writes `sellers` to `path`, replacing it atomically.
pub fn save(path: &Path, sellers: &[StoredSeller]) -> std::io::Result<()> {
    let file = File {
        sellers: sellers
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Entry {
                        refresh_token: s.refresh_token.expose().to_string(),
                        region: s.region.name().to_string(),
                        selling_partner_id: s.selling_partner_id.clone(),
                        authorized_at: s.authorized_at.clone(),
                    },
                )
            })
            .collect(),
    };
    let body = toml::to_string(&file).map_err(std::io::Error::other)?;
    write_atomically(path, format!("{HEADER}{body}").as_bytes())
}

/// `bytes` into `path`: a temporary file beside it (mode 0600), fsynced, renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("sellers_file names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seller(name: &str) -> StoredSeller {
        StoredSeller {
            name: name.into(),
            refresh_token: Secret::new(format!("Atzr|{name}")),
            region: Region::Eu,
            selling_partner_id: Some("A3SIMSELLER".into()),
            authorized_at: "2026-12-07T02:50:00Z".into(),
        }
    }

    fn scratch(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("spapi-stored-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn sellers_round_trip_with_mode_0600_and_nothing_left_beside_them() {
        let dir = scratch("round-trip");
        let path = dir.join("sellers.toml");
        assert_eq!(load(&path).unwrap(), []);
        save(&path, &[seller("acme"), seller("beta")]).unwrap();
        assert_eq!(load(&path).unwrap(), [seller("acme"), seller("beta")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["sellers.toml"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_whole() {
        let dir = scratch("failed-write");
        let path = dir.join("sellers.toml");
        save(&path, &[seller("acme")]).unwrap();
        let before = std::fs::read(&path).unwrap();
        // The temporary file cannot be made (a directory is in its way): the write fails...
        let blocker = dir.join(format!(".sellers.toml.tmp-{}", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        assert!(save(&path, &[seller("acme"), seller("beta")]).is_err());
        // ... and the file is as it was.
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_names_the_key() {
        let dir = scratch("bad-file");
        let path = dir.join("sellers.toml");
        std::fs::write(
            &path,
            "[sellers.acme]\nregion = \"mars\"\nrefresh_token = \"x\"\nauthorized_at = \"\"\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("sellers.acme.region"), "{e}");
        std::fs::write(&path, "garbage = [").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("sellers_file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
