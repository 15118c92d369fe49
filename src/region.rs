//! Which region a request goes to: `x-spapi-region`, else the marketplaces it names (query or
//! held JSON body), else the seller's own region.
//!
//! The marketplace table is Amazon's ("SP-API endpoints" and "Marketplace IDs" pages), kept in
//! `marketplaces.tsv` beside this file.

use std::sync::OnceLock;

use crate::config::Region;
use crate::error::ProxyError;

/// The marketplace table as published: region, country, code, id, endpoints, AWS region.
const TABLE: &str = include_str!("marketplaces.tsv");

/// Query parameters that name marketplaces, in the spellings SP-API's operations use.
const QUERY_NAMES: [&str; 4] = [
    "MarketplaceIds",
    "marketplaceIds",
    "MarketplaceId",
    "marketplaceId",
];

/// The table: each id, its [`IdKey`] (what the request path compares) and its region.
fn table() -> &'static [(&'static str, IdKey, Region)] {
    static PARSED: OnceLock<Vec<(&'static str, IdKey, Region)>> = OnceLock::new();
    PARSED.get_or_init(|| {
        TABLE
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let region = Region::from_name(cols.next()?)?;
                let id = cols.nth(2)?;
                let key = IdKey::of(id.as_bytes()).expect("ids are 8 to 16 bytes");
                Some((id, key, region))
            })
            .collect()
    })
}

/// An id of 8 to 16 bytes (every marketplace id is 13 or 14) as its first and last eight
/// bytes and its length: equal keys are equal ids, compared in three instructions instead of
/// a call comparing slices.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct IdKey(u64, u64, usize);

impl IdKey {
    fn of(id: &[u8]) -> Option<IdKey> {
        let n = id.len();
        let first: [u8; 8] = id.get(..8)?.try_into().ok()?;
        let last: [u8; 8] = id.get(n.checked_sub(8)?..)?.try_into().ok()?;
        (n <= 16).then(|| IdKey(u64::from_le_bytes(first), u64::from_le_bytes(last), n))
    }
}

/// The region of a marketplace id, if it is one Amazon lists.
pub fn of_marketplace(id: &str) -> Option<Region> {
    of_marketplace_bytes(id.as_bytes())
}

fn of_marketplace_bytes(id: &[u8]) -> Option<Region> {
    let key = IdKey::of(id)?;
    table().iter().find(|(_, k, _)| *k == key).map(|&(.., r)| r)
}

/// The region all of `ids` belong to: `Ok(None)` for none (or only unknown ids), an error
/// naming them when they span regions.
fn one_region<'a>(ids: impl Iterator<Item = &'a str>) -> Result<Option<Region>, ProxyError> {
    let mut found: Vec<(&str, Region)> = Vec::new();
    for id in ids {
        if let Some(r) = of_marketplace(id) {
            found.push((id, r));
        }
    }
    let Some(&(_, first)) = found.first() else {
        return Ok(None);
    };
    if found.iter().all(|&(_, r)| r == first) {
        return Ok(Some(first));
    }
    let named: Vec<String> = found
        .iter()
        .map(|(id, r)| format!("{id} ({})", r.name()))
        .collect();
    Err(ProxyError::BadRequest(format!(
        "the request names marketplaces of different regions: {}; one request goes to one \
         region, so send one request per region",
        named.join(", ")
    )))
}

/// The region the query's marketplaces (comma-separated or repeated) belong to.
///
/// On the request path: without a mixed-region query this allocates only for a value that
/// is percent-encoded.
pub fn from_query(query: Option<&str>) -> Result<Option<Region>, ProxyError> {
    let Some(query) = query else {
        return Ok(None);
    };
    // Bytes, not `str::split`: this runs on every request, and the pieces are short.
    let mut region = None;
    let note = |region: &mut Option<Region>, id: &[u8]| match of_marketplace_bytes(id.trim_ascii())
    {
        Some(r) => note_region(region, r),
        None => Ok(()),
    };
    let bytes = query.as_bytes();
    let mut start = 0;
    while start <= bytes.len() {
        let end = find_byte(&bytes[start..], b'&').map_or(bytes.len(), |i| start + i);
        let pair = &bytes[start..end];
        start = end + 1;
        // Every spelling is `[Mm]arketplaceId[s]=`: most pairs are passed over on their
        // second byte, and the `=` of one of ours is its 14th or 15th byte (a name without
        // a value names nothing).
        if pair.get(1..12) != Some(b"arketplaceI".as_slice()) {
            continue;
        }
        let at = match (pair.get(13), pair.get(14)) {
            (Some(b'='), _) => 13,
            (_, Some(b'=')) => 14,
            _ => continue,
        };
        let (name, value) = (&pair[..at], &pair[at + 1..]);
        if !is_query_name(name) {
            continue;
        }
        let noted = if let Some(r) = of_marketplace_bytes(value) {
            // One listed id as it is (ids are letters and digits): the usual query.
            note_region(&mut region, r)
        } else if !value.iter().any(|&b| matches!(b, b'%' | b'+' | b',')) {
            note(&mut region, value)
        } else if value.iter().any(|&b| b == b'%' || b == b'+') {
            let decoded = form_urlencoded::parse(pair)
                .next()
                .map_or_else(Default::default, |(_, v)| v);
            decoded
                .as_bytes()
                .split(|&b| b == b',')
                .try_for_each(|id| note(&mut region, id))
        } else {
            value
                .split(|&b| b == b',')
                .try_for_each(|id| note(&mut region, id))
        };
        if noted.is_err() {
            return mixed(query);
        }
    }
    Ok(region)
}

/// Where `needle` first is in `hay`, eight bytes at a time: a query is a few dozen bytes, for
/// which memchr's set-up costs more than the search (50 instructions a call, measured).
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let pattern = ONES * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // The lowest high bit set marks the first zero byte of `x`, the first `needle`.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(offset + (zero.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// Notes one marketplace's region: an error (`mixed` names them all) when it differs from the
/// one noted before.
fn note_region(noted: &mut Option<Region>, r: Region) -> Result<(), ()> {
    match *noted {
        None => {
            *noted = Some(r);
            Ok(())
        }
        Some(a) if a == r => Ok(()),
        Some(_) => Err(()),
    }
}

/// Whether a query parameter's name is one of [`QUERY_NAMES`], given that its bytes 1 to 11
/// are `arketplaceI`: the rest is `[Mm]` before and `d` or `ds` after.
fn is_query_name(name: &[u8]) -> bool {
    debug_assert_eq!(name.get(1..12), Some(b"arketplaceI".as_slice()));
    matches!(
        name,
        [b'M' | b'm', _, _, _, _, _, _, _, _, _, _, _, b'd']
            | [b'M' | b'm', _, _, _, _, _, _, _, _, _, _, _, b'd', b's']
    )
}

/// The error for a query whose marketplaces span regions.
fn mixed(query: &str) -> Result<Option<Region>, ProxyError> {
    let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| QUERY_NAMES.contains(&k.as_ref()))
        .map(|(_, v)| v.into_owned())
        .collect();
    one_region(values.iter().flat_map(|v| v.split(',')).map(str::trim))
}

/// The region of a held JSON body's `marketplaceIds` (createReport, createFeed, ...).
pub fn from_body(body: &[u8]) -> Result<Option<Region>, ProxyError> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "marketplaceIds", default)]
        marketplace_ids: Vec<String>,
    }
    if !body.trim_ascii_start().starts_with(b"{") {
        return Ok(None);
    }
    // Not JSON, or marketplaceIds not a list of strings: Amazon will say what is wrong.
    let Ok(named) = serde_json::from_slice::<Named>(body) else {
        return Ok(None);
    };
    one_region(named.marketplace_ids.iter().map(String::as_str))
}

/// `x-spapi-region`, if the request forces one.
pub fn from_header(value: Option<&str>) -> Result<Option<Region>, ProxyError> {
    value
        .map(|v| {
            Region::from_name(v).ok_or_else(|| {
                ProxyError::BadRequest(format!(
                    "{}: `{v}` is not a region; use na, eu or fe",
                    crate::auth::REGION_HEADER
                ))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_marketplace_has_a_region() {
        assert_eq!(table().len(), 23);
        assert_eq!(of_marketplace("ATVPDKIKX0DER"), Some(Region::Na));
        assert_eq!(of_marketplace("A1PA6795UKMFR9"), Some(Region::Eu));
        assert_eq!(of_marketplace("A1VC38T7YXB528"), Some(Region::Fe));
        assert_eq!(of_marketplace("NOPE"), None);
        assert_eq!(of_marketplace("ATVPDKIKX0DER\0"), None);
        assert_eq!(of_marketplace("ATVPDKIKX0DERATVPDKIKX0DER"), None);
        for &(id, _, region) in table() {
            assert_eq!(of_marketplace(id), Some(region), "{id}");
        }
    }

    #[test]
    fn find_byte_is_position() {
        let hay: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..hay.len() {
            for needle in [b'a', b'h', b'i', b'p', b'z', b'&', 0x80, 0xff, 0] {
                let mut h = hay[..len].to_vec();
                for at in [None, Some(0), Some(len / 2), len.checked_sub(1)] {
                    if let Some(at) = at.filter(|&a| a < len) {
                        h[at] = needle;
                    }
                    let want = h.iter().position(|&b| b == needle);
                    assert_eq!(find_byte(&h, needle), want, "{h:?} {needle}");
                }
            }
        }
    }

    #[test]
    fn the_name_check_is_the_names_list() {
        for first in ["M", "m", "X", "n"] {
            for tail in ["", "d", "ds", "dx", "dss", "x", "D", "Ds"] {
                let name = format!("{first}arketplaceI{tail}");
                assert_eq!(
                    is_query_name(name.as_bytes()),
                    QUERY_NAMES.contains(&name.as_str()),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn query_table() {
        let cases: [(&str, Option<Option<Region>>); 16] = [
            ("", Some(None)),
            ("CreatedAfter=2024-01-01", Some(None)),
            ("MarketplaceIds=ATVPDKIKX0DER", Some(Some(Region::Na))),
            (
                "marketplaceIds=A1PA6795UKMFR9,A13V1IB3VIYZZH",
                Some(Some(Region::Eu)),
            ),
            ("MarketplaceId=A1VC38T7YXB528", Some(Some(Region::Fe))),
            (
                "marketplaceId=A1PA6795UKMFR9&marketplaceId=A1F83G8C2ARO7P",
                Some(Some(Region::Eu)),
            ),
            ("MarketplaceIds=ATVPDKIKX0DER%2CA1PA6795UKMFR9", None),
            (
                "MarketplaceIds=ATVPDKIKX0DER&MarketplaceIds=A1VC38T7YXB528",
                None,
            ),
            ("MarketplaceIds=UNKNOWN", Some(None)),
            ("MarketplaceIds=+A1PA6795UKMFR9", Some(Some(Region::Eu))),
            ("MarketplaceIds", Some(None)),
            ("&&MarketplaceIds=&x=1", Some(None)),
            ("marketplaceIds=ATVPDKIKX0DER,%20A1F83G8C2ARO7P", None),
            ("MarketplaceIdsX=A1PA6795UKMFR9", Some(None)),
            (
                "n=1&MarketplaceIds=A1PA6795UKMFR9&x",
                Some(Some(Region::Eu)),
            ),
            ("xMarketplaceIds=A1PA6795UKMFR9", Some(None)),
        ];
        for (query, want) in cases {
            let got = from_query(Some(query));
            match want {
                Some(region) => assert_eq!(got.unwrap(), region, "{query}"),
                None => {
                    let msg = got.unwrap_err().to_string();
                    assert!(
                        msg.contains("(na)") && msg.contains("different regions"),
                        "{query}: {msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn body_table() {
        let cases: [(&str, Option<Option<Region>>); 5] = [
            (
                r#"{"reportType":"X","marketplaceIds":["A1PA6795UKMFR9"]}"#,
                Some(Some(Region::Eu)),
            ),
            (r#"{"reportType":"X"}"#, Some(None)),
            ("not json", Some(None)),
            (r#"{"marketplaceIds":"A1PA6795UKMFR9"}"#, Some(None)),
            (
                r#"{"marketplaceIds":["A1PA6795UKMFR9","ATVPDKIKX0DER"]}"#,
                None,
            ),
        ];
        for (body, want) in cases {
            let got = from_body(body.as_bytes());
            match want {
                Some(region) => assert_eq!(got.unwrap(), region, "{body}"),
                None => assert!(got.is_err(), "{body}"),
            }
        }
    }

    #[test]
    fn header_values() {
        assert_eq!(from_header(Some("EU")).unwrap(), Some(Region::Eu));
        assert_eq!(from_header(None).unwrap(), None);
        assert!(from_header(Some("mars")).is_err());
    }
}
