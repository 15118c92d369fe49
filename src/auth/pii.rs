//! Which dataElements the application turned out to have no role for, learnt from the Tokens
//! API's refusals, so that operations whose personal data is optional keep working without it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

/// The Tokens API's words when the application lacks the role for requested dataElements
/// (abuzuhri/Amazon-SP-API-CSharp#155, selling-partner-api-docs#1201).
const ROLE_REFUSAL: &str = "does not have access to one or more requested data elements";

/// Whether a refused mint's message says the application lacks the role for its dataElements.
pub fn is_role_refusal(message: &str) -> bool {
    message.to_ascii_lowercase().contains(ROLE_REFUSAL)
}

/// Amazon's refusal, as it worded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Amazon's error code, e.g. `InvalidInput`.
    pub code: String,
    /// Amazon's message, naming the elements.
    pub message: String,
}

#[derive(Debug)]
struct Learnt {
    refusal: Refusal,
    at: Instant,
}

/// Refused dataElements sets, each forgotten after `retry_after` so that a role granted later
/// is picked up without a restart.
#[derive(Debug)]
pub struct PiiRoles {
    retry_after: Duration,
    refused: Mutex<HashMap<Vec<String>, Learnt>>,
}

impl PiiRoles {
    /// Nothing learnt yet.
    pub fn new(retry_after: Duration) -> PiiRoles {
        PiiRoles {
            retry_after,
            refused: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<String>, Learnt>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Amazon's refusal of `elements` (sorted) if it is still remembered. An entry older than
    /// the retry time is dropped, so the next mint asks Amazon again.
    pub fn refused(&self, elements: &[String]) -> Option<Refusal> {
        let mut map = self.lock();
        let learnt = map.get(elements)?;
        if learnt.at.elapsed() >= self.retry_after {
            map.remove(elements);
            return None;
        }
        Some(learnt.refusal.clone())
    }

    /// Remembers that Amazon refused `elements`; the first time, says so once at WARN.
    pub fn learn(&self, elements: &[String], refusal: Refusal) {
        let mut map = self.lock();
        if !map.contains_key(elements) {
            tracing::warn!(
                data_elements = %elements.join(","),
                retry_in_secs = self.retry_after.as_secs(),
                amazon = %refusal.message,
                "the application has no role for these dataElements; requests that can do without \
                 them are sent with the LWA token and answered without personal data \
                 (x-spapi-proxy-pii: omitted). Set restricted_data = \"never\" to stop asking, \
                 or grant the role in the Developer Console"
            );
        }
        map.insert(
            elements.to_vec(),
            Learnt {
                refusal,
                at: Instant::now(),
            },
        );
    }

    /// What was learnt, for `/_proxy/status`.
    pub fn snapshot(&self) -> Value {
        let map = self.lock();
        let mut entries: Vec<Value> = map
            .iter()
            .map(|(elements, l)| {
                json!({
                    "data_elements": elements,
                    "state": "refused",
                    "learnt_secs_ago": l.at.elapsed().as_secs(),
                    "retry_in_secs": self.retry_after.saturating_sub(l.at.elapsed()).as_secs(),
                    "amazon_code": l.refusal.code,
                    "amazon_message": l.refusal.message,
                })
            })
            .collect();
        entries.sort_by_key(|e| e["data_elements"].to_string());
        Value::Array(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_refusals_are_told_from_other_refusals() {
        let cases = [
            ("Application does not have access to one or more requested data elements: [buyerInfo, shippingAddress]", true),
            ("application does not have access to one or more requested data elements: [buyerInfo] (x)", true),
            ("Application do not have access to some or all requested resource", false),
            ("Request is missing or has invalid parameters", false),
        ];
        for (message, want) in cases {
            assert_eq!(is_role_refusal(message), want, "{message}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_forgotten_after_the_retry_time() {
        let roles = PiiRoles::new(Duration::from_secs(3600));
        let set = vec!["buyerInfo".to_string(), "shippingAddress".to_string()];
        let refusal = Refusal {
            code: "InvalidInput".into(),
            message: "no role".into(),
        };
        assert_eq!(roles.refused(&set), None);
        roles.learn(&set, refusal.clone());
        assert_eq!(roles.refused(&set), Some(refusal));
        assert_eq!(roles.refused(&["buyerInfo".to_string()]), None);
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(roles.refused(&set).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(roles.refused(&set), None, "asked again after an hour");
        assert_eq!(roles.snapshot(), json!([]));
    }
}
