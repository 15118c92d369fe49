//! One request target, one meaning: what the proxy matches is exactly what Amazon receives.
//!
//! A path that an HTTP client or server could read two ways (dot segments, raw or
//! percent-encoded; empty segments; characters a URL parser re-encodes) is refused before
//! matching, so that no request can be counted against one operation's bucket, or carry one
//! operation's RDT, and reach another.

use http::{Method, Uri};

use crate::error::ProxyError;

/// Checks a request target before anything else looks at it. Origin-form (`/path?query`) is
/// served, and absolute-form (`http://host/path`) when `authority_allowed` says its authority
/// names this proxy; `OPTIONS *`, `CONNECT host:port` and everything else are refused.
pub fn check(
    method: &Method,
    uri: &Uri,
    authority_allowed: impl Fn(&str) -> bool,
) -> Result<(), ProxyError> {
    if *method == Method::CONNECT {
        return Err(bad(
            "CONNECT is not served: this is a reverse proxy, not a tunnel",
        ));
    }
    if let Some(authority) = uri.authority() {
        let http = matches!(uri.scheme_str(), Some("http" | "https"));
        if !http || !authority_allowed(authority.as_str()) {
            return Err(ProxyError::HostNotAllowed(
                authority.as_str().chars().take(100).collect(),
            ));
        }
    } else if uri.scheme().is_some() {
        return Err(bad("the request target has a scheme but no host"));
    }
    let path = uri.path();
    // A client calls one endpoint again and again (a listing's pages differ in their query
    // only): the last path this thread passed is passed again without a look at its bytes.
    LAST_PASSED.with(|last| {
        let mut last = last.borrow_mut();
        if last.is_empty() || *last != path {
            check_path(path)?;
            last.clear();
            if path.len() <= LAST_PASSED_MAX {
                last.push_str(path);
            }
        }
        Ok(())
    })
}

/// The longest path [`LAST_PASSED`] holds: SP-API paths are short; a longer one is checked
/// every time, and the memo keeps no client's megabyte.
const LAST_PASSED_MAX: usize = 256;

thread_local! {
    /// The last path this thread's [`check`] passed (empty: none; an empty path never passes).
    static LAST_PASSED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The path rules: it starts with `/`, holds only RFC 3986 `pchar`s and `/`, its percent
/// escapes are well formed, no segment is `.` or `..` in any spelling, and no segment is empty
/// except after a single trailing slash. One pass over the bytes (a second, splitting the path
/// into segments, cost as much again).
pub fn check_path(path: &str) -> Result<(), ProxyError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(bad(&format!(
            "the request target `{}` is not a path (`OPTIONS *` and the like are not served)",
            printable(path)
        )));
    }
    let mut segment = Segment::default();
    let mut i = 1;
    while i < bytes.len() {
        // Most bytes are plain `pchar`s (not `.`, `/` or `%`): counted in a tight run.
        let run = bytes[i..]
            .iter()
            .position(|&b| !PLAIN[usize::from(b)])
            .unwrap_or(bytes.len() - i);
        segment.chars = segment
            .chars
            .saturating_add(u32::try_from(run).unwrap_or(u32::MAX));
        i += run;
        let Some(&b) = bytes.get(i) else { break };
        match b {
            b'/' => {
                segment.end(false)?;
                segment = Segment::default();
            }
            b'%' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(bad("the path has a `%` that is not a percent escape"));
                }
                segment.push(hex.is_some_and(|h| h.eq_ignore_ascii_case(b"2e")));
                i += 3;
                continue;
            }
            b'.' => segment.push(true),
            b => {
                return Err(bad(&format!(
                "the path has the character {:?}, which SP-API paths never hold; percent-encode it",
                char::from(b)
            )))
            }
        }
        i += 1;
    }
    segment.end(true)
}

/// What the path check knows of the segment it is in: how many characters, how many of them
/// dots (`.` or `%2e`).
#[derive(Default)]
struct Segment {
    chars: u32,
    dots: u32,
}

impl Segment {
    fn push(&mut self, dot: bool) {
        self.chars = self.chars.saturating_add(1);
        self.dots = self.dots.saturating_add(u32::from(dot));
    }

    /// The segment is over (`last`: the path is); an error if it is empty before another, or
    /// `.` or `..` in any spelling.
    fn end(&self, last: bool) -> Result<(), ProxyError> {
        if self.chars == 0 && !last {
            return Err(bad("the path has an empty segment (`//`)"));
        }
        if self.dots == self.chars && matches!(self.dots, 1 | 2) {
            return Err(bad(
                "the path has a `.` or `..` segment (raw or percent-encoded); send the path as it is meant",
            ));
        }
        Ok(())
    }
}

/// RFC 3986 `pchar`s the path check passes over in runs: all but `%` (an escape) and `.`
/// (counted, for dot segments), so unreserved, sub-delims, `:` and `@`.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

/// At most 100 characters of a client's input, for an error message.
fn printable(s: &str) -> String {
    s.chars().take(100).collect()
}

fn bad(message: &str) -> ProxyError {
    ProxyError::BadRequest(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memo of the last passed path changes nothing: a refusal is never remembered, and
    /// an empty target or one past the memo's size is checked every time.
    #[test]
    fn the_last_passed_path_is_only_a_shortcut() {
        let get = Method::GET;
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let ok = |u: &str| check(&get, &uri(u), |_| false).is_ok();
        for _ in 0..2 {
            assert!(ok("/orders/v0/orders?MarketplaceIds=A"));
            assert!(ok("/orders/v0/orders?NextToken=x"));
            assert!(!ok("/orders/v0/../orders"));
            assert!(!ok("/orders//v0"));
            assert!(ok("/orders/v0/orders"));
        }
        let long = format!("/{}", "a".repeat(LAST_PASSED_MAX + 10));
        let long_bad = format!("{long}/..");
        assert!(ok(&long));
        assert!(!ok(&long_bad));
        assert!(ok(&long));
        assert!(!ok("*"), "asterisk-form");
        assert!(!ok("*"));
    }

    #[test]
    fn path_table() {
        let cases = [
            ("plain", "/orders/v0/orders", true),
            ("trailing slash", "/orders/v0/orders/", true),
            ("root", "/", true),
            (
                "ids as SP-API has them",
                "/orders/v0/orders/902-3159896-1390916",
                true,
            ),
            (
                "escaped slash in an id",
                "/listings/2021-08-01/items/A1/SKU%2F1",
                true,
            ),
            ("plus and comma", "/x/a+b,c", true),
            ("dots inside a segment", "/fba/a.b/..c/c..", true),
            ("dot", "/orders/./v0", false),
            ("dot dot", "/x/../orders/v0/orders", false),
            ("encoded dot dot", "/x/%2e%2e/orders/v0/orders", false),
            ("mixed case", "/x/%2E%2e/orders", false),
            ("half encoded", "/x/.%2E/orders", false),
            ("encoded dot", "/x/%2e/orders", false),
            ("trailing dot dot", "/orders/v0/orders/%2e%2e", false),
            ("trailing dot", "/orders/v0/orders/.", false),
            ("double slash", "/orders//v0/orders", false),
            ("leading double slash", "//orders/v0/orders", false),
            ("backslash", "/orders\\..\\x", false),
            ("brace", "/x/{id}", false),
            ("broken escape", "/x/%zz", false),
            ("short escape", "/x/%2", false),
            ("three dots", "/x/.../y", true),
            ("an escape that is not a dot", "/x/%2f%2E", true),
            ("top-level encoded dot", "/%2e", false),
            ("dot then slash", "/./", false),
            ("two trailing slashes", "/x//", false),
            ("asterisk form", "*", false),
            ("empty", "", false),
        ];
        for (name, path, ok) in cases {
            assert_eq!(check_path(path).is_ok(), ok, "{name}: {path}");
        }
    }

    #[test]
    fn target_forms() {
        let cases = [
            (Method::GET, "/orders/v0/orders?MarketplaceIds=X", true),
            (Method::GET, "http://localhost:8080/orders/v0/orders", true),
            (Method::GET, "http://localhost:8080/x/%2e%2e/orders", false),
            (Method::OPTIONS, "*", false),
            (Method::GET, "http://evil.example/orders/v0/orders", false),
            (Method::CONNECT, "evil.example:443", false),
        ];
        for (method, target, ok) in cases {
            let uri: Uri = target.parse().unwrap();
            let allowed = |a: &str| a.starts_with("localhost");
            assert_eq!(
                check(&method, &uri, allowed).is_ok(),
                ok,
                "{method} {target}"
            );
        }
    }
}
