//! `[operations.<name>]`: per-operation settings, checked against the catalog.

use std::collections::HashMap;

use serde::Deserialize;

use super::{
    invalid, positive_burst, positive_rate, ConfigError, OperationSettings, RestrictedData,
};
use crate::operations::{AuthKind, Catalog};

/// `[operations.<name>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    rate: Option<f64>,
    burst: Option<u32>,
    data_elements: Option<Vec<String>>,
    restricted_data: Option<String>,
}

/// Validates `[operations.*]`. A key is an operationId (applying to every API that has it) or an
/// API name holding operationIds (`[operations.ordersV0.getOrders]`, that one operation only,
/// which wins over the bare name).
pub(super) fn operation_settings(
    table: toml::Table,
) -> Result<HashMap<usize, OperationSettings>, ConfigError> {
    let catalog = Catalog::builtin();
    let suggest = |name: &str| {
        catalog
            .nearest(name)
            .map_or_else(String::new, |n| format!("; did you mean `{n}`?"))
    };
    let mut bare = Vec::new();
    let mut qualified = Vec::new();
    for (name, value) in table {
        let ops = catalog.by_id(&name);
        if !ops.is_empty() {
            bare.push((format!("operations.{name}"), ops, value));
        } else if catalog.has_api(&name) {
            let toml::Value::Table(inner) = value else {
                return Err(invalid(
                    &format!("operations.{name}"),
                    "an API name must hold a table of operationIds",
                ));
            };
            for (id, value) in inner {
                let key = format!("operations.{name}.{id}");
                let op = catalog.by_qualified(&name, &id).ok_or_else(|| {
                    invalid(
                        &key,
                        format!(
                            "API {name} has no operation {id}{}",
                            suggest(&format!("{name}.{id}"))
                        ),
                    )
                })?;
                qualified.push((key, vec![op], value));
            }
        } else {
            return Err(invalid(
                &format!("operations.{name}"),
                format!(
                    "no SP-API operation or API is called `{name}`{}",
                    suggest(&name)
                ),
            ));
        }
    }
    let mut out = HashMap::new();
    for (key, ops, value) in bare.into_iter().chain(qualified) {
        let raw: RawOverride = value
            .try_into()
            .map_err(|e: toml::de::Error| invalid(&key, e.message().to_string()))?;
        let settings = OperationSettings {
            rate: raw
                .rate
                .map(|r| positive_rate(&format!("{key}.rate"), r))
                .transpose()?,
            burst: raw
                .burst
                .map(|b| positive_burst(&format!("{key}.burst"), b))
                .transpose()?,
            data_elements: raw.data_elements,
            restricted_data: raw
                .restricted_data
                .map(|r| RestrictedData::parse(&format!("{key}.restricted_data"), &r))
                .transpose()?,
        };
        // A bare name may cover several APIs (getOrders): restricted_data applies to those
        // whose personal data is optional, and is an error only if none is.
        if settings.restricted_data.is_some() && !ops.iter().any(|o| o.auth.pii_optional()) {
            return Err(invalid(
                &format!("{key}.restricted_data"),
                format!(
                    "{} has no optional personal data (auth: {}); restricted_data applies to \
                     operations that work with or without an RDT",
                    ops[0].qualified(),
                    ops[0].auth.name()
                ),
            ));
        }
        for op in ops {
            if let Some(elements) = &settings.data_elements {
                let allowed: &[String] = match &op.auth {
                    AuthKind::Rdt(spec) => &spec.elements,
                    _ => &[],
                };
                if let Some(bad) = elements.iter().find(|e| !allowed.contains(e)) {
                    return Err(invalid(
                        &format!("{key}.data_elements"),
                        format!(
                            "{} does not accept `{bad}` (accepted: {})",
                            op.qualified(),
                            if allowed.is_empty() {
                                "none".to_string()
                            } else {
                                allowed.join(", ")
                            }
                        ),
                    ));
                }
            }
            // Bare names come first, so a qualified entry's fields win over them.
            let entry: &mut OperationSettings = out.entry(op.index).or_default();
            entry.rate = settings.rate.or(entry.rate);
            entry.burst = settings.burst.or(entry.burst);
            entry.data_elements = settings
                .data_elements
                .clone()
                .or(entry.data_elements.take());
            if op.auth.pii_optional() {
                entry.restricted_data = settings.restricted_data.or(entry.restricted_data);
            }
        }
    }
    Ok(out)
}
