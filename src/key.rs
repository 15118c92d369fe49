//! The one key for "whose quota and whose tokens": a seller in a region, or the application
//! itself (grantless operations). Auth keys its per-seller caches by it, the limiter its
//! buckets, and a shared store would key its records by it.

use std::fmt;
use std::sync::Arc;

use crate::config::Region;

/// A seller in a region, or the application (`seller: None`) in a region.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The seller's configured name; `None` for the application's own (grantless) calls.
    pub seller: Option<Arc<str>>,
    /// The SP-API region.
    pub region: Region,
}

impl Key {
    /// `seller` in `region`.
    pub fn seller(seller: &Arc<str>, region: Region) -> Key {
        Key {
            seller: Some(Arc::clone(seller)),
            region,
        }
    }

    /// The application's own calls in `region`.
    pub fn application(region: Region) -> Key {
        Key {
            seller: None,
            region,
        }
    }

    /// The seller's name, or `(application)`.
    pub fn seller_name(&self) -> &str {
        self.seller.as_deref().unwrap_or("(application)")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.seller_name(), self.region.name())
    }
}
