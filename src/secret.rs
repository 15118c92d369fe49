//! A string that must never reach a log line, an error message or debug output.

use std::fmt;
use std::sync::Arc;

/// A credential or token (client secret, refresh token, access token, RDT).
///
/// `Debug` and `Display` print `***`; the only way to read the value is [`Secret::expose`],
/// which makes every place that puts a secret on the wire easy to find.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("Atzr|very-secret");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "Atzr|very-secret");
    }

    #[test]
    fn derived_debug_of_a_holder_hides_the_value() {
        #[derive(Debug)]
        #[allow(dead_code, reason = "only formatted")]
        struct Creds {
            id: String,
            secret: Secret,
        }
        let c = Creds {
            id: "app".into(),
            secret: Secret::new("hunter2"),
        };
        let out = format!("{c:?} {c:#?}");
        assert!(!out.contains("hunter2"), "{out}");
    }
}
