//! The SP-API operation catalog (generated from Amazon's models) and the (method, path) matcher.
//!
//! `src/catalog/operations.tsv` is written by `cargo run -p xtask -- catalog` from the models and
//! the hand-maintained `src/catalog/overlay.tsv`; it is compiled into the binary, so the proxy
//! needs no model files at run time.

use std::collections::HashMap;
use std::sync::OnceLock;

use http::Method;

/// The generated catalog, one operation per line.
pub const CATALOG_TSV: &str = include_str!("catalog/operations.tsv");

/// How an operation is authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// The seller's LWA access token.
    Lwa,
    /// A Restricted Data Token.
    Rdt(RdtSpec),
    /// An RDT only when the document belongs to a restricted report type (getReportDocument).
    RdtConditional,
    /// A client_credentials token for this scope; no seller involved.
    Grantless {
        /// e.g. `sellingpartnerapi::notifications`.
        scope: String,
    },
}

/// What a restricted operation's RDT request looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdtSpec {
    /// The dataElements Amazon accepts for this operation (empty: none).
    pub elements: Vec<String>,
    /// The dataElements asked for when the request names none.
    pub default_elements: Vec<String>,
    /// Whether the RDT may name the path template (one RDT for every id) or must name the path.
    pub generic: bool,
}

impl AuthKind {
    /// The short name used in the catalog and by `operations`.
    pub fn name(&self) -> &'static str {
        match self {
            AuthKind::Lwa => "lwa",
            AuthKind::Rdt(_) => "rdt",
            AuthKind::RdtConditional => "rdt-conditional",
            AuthKind::Grantless { .. } => "grantless",
        }
    }

    /// Whether the operation answers with or without an RDT, personal data only with one:
    /// restricted operations that take dataElements (Orders v0 getOrders, getOrder,
    /// getOrderItems), and getReportDocument.
    pub fn pii_optional(&self) -> bool {
        match self {
            AuthKind::Rdt(spec) => !spec.elements.is_empty(),
            AuthKind::RdtConditional => true,
            AuthKind::Lwa | AuthKind::Grantless { .. } => false,
        }
    }

    /// The scope or the dataElements, for display.
    pub fn detail(&self) -> String {
        match self {
            AuthKind::Lwa => String::new(),
            AuthKind::Rdt(spec) => format!(
                "dataElements: {}{}",
                if spec.elements.is_empty() {
                    "none".to_string()
                } else {
                    spec.elements.join(",")
                },
                if spec.generic {
                    "; generic path"
                } else {
                    "; specific path"
                }
            ),
            AuthKind::RdtConditional => "restricted report types only; specific path".into(),
            AuthKind::Grantless { scope } => format!("scope: {scope}"),
        }
    }
}

/// One SP-API operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Position in the catalog; a cheap key for per-operation state.
    pub index: usize,
    /// The model file's stem, e.g. `ordersV0` or `catalogItems_2022-04-01`.
    pub api: String,
    /// The model's `info.version`.
    pub version: String,
    /// The operationId, e.g. `getOrders` (not unique across APIs).
    pub id: String,
    /// HTTP method.
    pub method: Method,
    /// Path template, e.g. `/orders/v0/orders/{orderId}`.
    pub template: String,
    /// Published rate in requests per second, if the model has one.
    pub rate: Option<f64>,
    /// Published burst, if the model has one.
    pub burst: Option<u32>,
    /// Which token the operation needs.
    pub auth: AuthKind,
    /// Remarks from the generator (deprecated, placeholder usage plan, ...).
    pub notes: String,
}

impl Operation {
    /// `api.operationId`, unique across the catalog (e.g. `ordersV0.getOrders`).
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.api, self.id)
    }
}

/// All operations plus one routing trie per HTTP method.
#[derive(Debug)]
pub struct Catalog {
    operations: Vec<Operation>,
    routers: Vec<(Method, Router)>,
}

#[derive(Debug, Default)]
struct Node {
    /// Sorted by segment, for binary search, each with its [`prefix_key`].
    literals: Vec<(Box<str>, u32, u64)>,
    param: Option<u32>,
    operation: Option<u32>,
}

#[derive(Debug)]
struct Router {
    nodes: Vec<Node>,
    /// Templates without a `{param}`, whole (no slash at either end): most operations. A path
    /// found here is what the walk would find (it tries literals first at every level), in
    /// one hash and one comparison instead of a search per segment.
    exact: HashMap<Box<str>, u32, foldhash::fast::FixedState>,
}

impl Router {
    fn new() -> Router {
        Router {
            nodes: vec![Node::default()],
            exact: HashMap::default(),
        }
    }

    fn insert(&mut self, template: &str, op: u32) -> Result<(), String> {
        if !template.contains('{') {
            let whole: Vec<&str> = segments(template).collect();
            self.exact.insert(whole.join("/").into(), op);
        }
        let mut at = 0usize;
        for seg in segments(template) {
            let next = if seg.starts_with('{') && seg.ends_with('}') {
                match self.nodes[at].param {
                    Some(n) => n as usize,
                    None => {
                        self.nodes.push(Node::default());
                        let n = self.nodes.len() - 1;
                        self.nodes[at].param = Some(n as u32);
                        n
                    }
                }
            } else {
                let lits = &self.nodes[at].literals;
                match lits.binary_search_by(|(s, ..)| s.as_ref().cmp(seg)) {
                    Ok(i) => lits[i].1 as usize,
                    Err(i) => {
                        self.nodes.push(Node::default());
                        let n = self.nodes.len() - 1;
                        let key = prefix_key(seg.as_bytes());
                        self.nodes[at]
                            .literals
                            .insert(i, (seg.into(), n as u32, key));
                        n
                    }
                }
            };
            at = next;
        }
        match self.nodes[at].operation {
            Some(_) => Err(format!("two operations share the template {template}")),
            None => {
                self.nodes[at].operation = Some(op);
                Ok(())
            }
        }
    }

    /// Depth-first: a literal segment is tried before a `{param}`, and a dead end backtracks.
    /// `segs` is a cheap-to-clone iterator, so backtracking needs no allocation. It splits
    /// bytes, not `str`: a `char` pattern's searcher cost more than the rest of the walk.
    fn find(&self, node: usize, mut segs: Segments<'_>) -> Option<u32> {
        let n = &self.nodes[node];
        let Some(first) = segs.next() else {
            return n.operation;
        };
        // Compared by their first eight bytes as one number, and byte by byte only when
        // those are equal: the same order, without a call to compare slices at every step.
        // Equal numbers of two segments of at most eight bytes leave only their lengths to
        // compare (a path holds no zero byte).
        let key = prefix_key(first);
        if let Ok(i) = n.literals.binary_search_by(|(s, _, k)| {
            k.cmp(&key).then_with(|| {
                if s.len() <= 8 && first.len() <= 8 {
                    s.len().cmp(&first.len())
                } else {
                    s.as_bytes().cmp(first)
                }
            })
        }) {
            if let Some(op) = self.find(n.literals[i].1 as usize, segs.clone()) {
                return Some(op);
            }
        }
        match n.param {
            Some(p) if !first.is_empty() => self.find(p as usize, segs),
            _ => None,
        }
    }
}

/// A segment's first eight bytes as a big-endian number, zero-padded: ordered as the bytes
/// are (a path never holds a zero byte), so it decides most comparisons alone.
fn prefix_key(segment: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    let n = segment.len().min(8);
    first[..n].copy_from_slice(&segment[..n]);
    u64::from_be_bytes(first)
}

/// A request path's segments, as the router walks them.
/// Cheap to clone, for backtracking; each `/` is found by an inlined scan (a split with a
/// predicate behind a function pointer called it once per byte; memchr's set-up costs more
/// than a segment's few bytes).
#[derive(Clone)]
struct Segments<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Segments<'a> {
    fn new(path: &'a [u8]) -> Segments<'a> {
        Segments { rest: Some(path) }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == b'/') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// The path's segments; one trailing slash is ignored.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    p.split('/').filter(move |_| !p.is_empty())
}

fn parse_rate(s: &str, line: usize) -> Result<Option<f64>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(Some)
        .ok_or_else(|| format!("catalog line {line}: bad rate {s}"))
}

fn parse_auth(auth: &str, detail: &str, line: usize) -> Result<AuthKind, String> {
    let field = |key: &str| -> Option<&str> {
        detail
            .split(';')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let list = |v: Option<&str>| -> Vec<String> {
        v.unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    match auth {
        "lwa" => Ok(AuthKind::Lwa),
        "rdt" => Ok(AuthKind::Rdt(RdtSpec {
            elements: list(field("elements")),
            default_elements: list(field("default")),
            generic: field("path") == Some("generic"),
        })),
        "rdt-conditional" => Ok(AuthKind::RdtConditional),
        "grantless" => field("scope")
            .map(|s| AuthKind::Grantless { scope: s.into() })
            .ok_or_else(|| format!("catalog line {line}: grantless without scope")),
        other => Err(format!("catalog line {line}: unknown auth {other}")),
    }
}

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| Catalog::parse(CATALOG_TSV).expect("the generated catalog is valid"))
    }

    /// Parses the generated TSV.
    pub fn parse(tsv: &str) -> Result<Catalog, String> {
        let mut operations = Vec::new();
        for (n, line) in tsv.lines().enumerate().skip(1) {
            let line_no = n + 1;
            let c: Vec<&str> = line.split('\t').collect();
            let [api, version, id, method, template, rate, burst, auth, detail, notes] =
                c.as_slice()
            else {
                return Err(format!("catalog line {line_no}: expected 10 columns"));
            };
            operations.push(Operation {
                index: operations.len(),
                api: api.to_string(),
                version: version.to_string(),
                id: id.to_string(),
                method: method
                    .parse()
                    .map_err(|_| format!("catalog line {line_no}: bad method"))?,
                template: template.to_string(),
                rate: parse_rate(rate, line_no)?,
                burst: if burst.is_empty() {
                    None
                } else {
                    Some(
                        burst
                            .parse()
                            .map_err(|_| format!("catalog line {line_no}: bad burst"))?,
                    )
                },
                auth: parse_auth(auth, detail, line_no)?,
                notes: notes.to_string(),
            });
        }
        let mut routers: Vec<(Method, Router)> = Vec::new();
        for op in &operations {
            let router = match routers.iter_mut().find(|(m, _)| *m == op.method) {
                Some((_, r)) => r,
                None => {
                    routers.push((op.method.clone(), Router::new()));
                    &mut routers.last_mut().expect("just pushed").1
                }
            };
            router.insert(&op.template, op.index as u32)?;
        }
        Ok(Catalog {
            operations,
            routers,
        })
    }

    /// Every operation, in catalog order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The operation a request is for. `path` is the request path without the query.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Operation> {
        let router = &self.routers.iter().find(|(m, _)| m == method)?.1;
        let p = path.strip_prefix('/').unwrap_or(path);
        let p = p.strip_suffix('/').unwrap_or(p);
        if p.is_empty() {
            return None;
        }
        if let Some(&i) = router.exact.get(p) {
            return Some(&self.operations[i as usize]);
        }
        router
            .find(0, Segments::new(p.as_bytes()))
            .map(|i| &self.operations[i as usize])
    }

    /// Operations with this operationId (several APIs reuse names such as `getOrders`).
    pub fn by_id(&self, id: &str) -> Vec<&Operation> {
        self.operations.iter().filter(|o| o.id == id).collect()
    }

    /// The operation named `api.operationId`.
    pub fn by_qualified(&self, api: &str, id: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.api == api && o.id == id)
    }

    /// Whether `api` is a model file stem in the catalog.
    pub fn has_api(&self, api: &str) -> bool {
        self.operations.iter().any(|o| o.api == api)
    }

    /// The catalog name closest to `name` (operationIds, qualified names and API names).
    pub fn nearest(&self, name: &str) -> Option<String> {
        let mut candidates: Vec<String> = Vec::new();
        for o in &self.operations {
            candidates.push(o.id.clone());
            candidates.push(o.qualified());
        }
        candidates
            .into_iter()
            .map(|c| {
                (
                    edit_distance(&c.to_ascii_lowercase(), &name.to_ascii_lowercase()),
                    c,
                )
            })
            .min()
            .map(|(_, c)| c)
    }
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment),
/// for "did you mean" suggestions: typos are mostly swaps.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> &'static Catalog {
        Catalog::builtin()
    }

    #[test]
    fn the_exact_table_agrees_with_the_walk() {
        let mut checked = 0;
        for (method, router) in &cat().routers {
            for (path, &op) in &router.exact {
                let walked = router.find(0, Segments::new(path.as_bytes()));
                assert_eq!(walked, Some(op), "{method} {path}");
                checked += 1;
            }
        }
        // Most operations have no path parameter.
        assert!(checked > 150, "{checked}");
    }

    fn find(method: &str, path: &str) -> Option<String> {
        cat()
            .find(&method.parse().unwrap(), path)
            .map(Operation::qualified)
    }

    #[test]
    fn catalog_has_every_operation_of_the_models() {
        assert_eq!(cat().operations().len(), 370);
        let rated = cat()
            .operations()
            .iter()
            .filter(|o| o.rate.is_some())
            .count();
        assert_eq!(rated, 300);
        let rdt = cat()
            .operations()
            .iter()
            .filter(|o| matches!(o.auth, AuthKind::Rdt(_)))
            .count();
        assert_eq!(rdt, 30);
    }

    #[test]
    fn published_rates_spot_checks() {
        let cases = [
            ("ordersV0", "getOrders", 0.0167, 20),
            ("ordersV0", "getOrder", 0.5, 30),
            ("tokens_2021-03-01", "createRestrictedDataToken", 1.0, 10),
            ("catalogItems_2022-04-01", "getCatalogItem", 2.0, 2),
            (
                "definitionsProductTypes_2020-09-01",
                "searchDefinitionsProductTypes",
                5.0,
                10,
            ),
        ];
        for (api, id, rate, burst) in cases {
            let op = cat().by_qualified(api, id).unwrap();
            assert_eq!(op.rate, Some(rate), "{api}.{id}");
            assert_eq!(op.burst, Some(burst), "{api}.{id}");
        }
        let placeholder = cat()
            .by_qualified("fulfillmentInbound_2024-03-20", "listPrepDetails")
            .unwrap();
        assert_eq!(placeholder.rate, None);
        assert!(placeholder.notes.contains("placeholder"));
    }

    #[test]
    fn matcher_table() {
        let cases = [
            ("GET", "/orders/v0/orders", Some("ordersV0.getOrders")),
            ("GET", "/orders/v0/orders/", Some("ordersV0.getOrders")),
            (
                "GET",
                "/orders/v0/orders/902-3159896-1390916",
                Some("ordersV0.getOrder"),
            ),
            (
                "GET",
                "/orders/v0/orders/902-3159896-1390916/address",
                Some("ordersV0.getOrderAddress"),
            ),
            (
                "GET",
                "/orders/v0/orders/902-3159896-1390916/orderItems/buyerInfo",
                Some("ordersV0.getOrderItemsBuyerInfo"),
            ),
            (
                "GET",
                "/orders/2026-01-01/orders/902-3159896-1390916",
                Some("orders_2026-01-01.getOrder"),
            ),
            (
                "GET",
                "/catalog/2022-04-01/items/B0C1EXAMPL",
                Some("catalogItems_2022-04-01.getCatalogItem"),
            ),
            (
                "POST",
                "/fba/outbound/2020-07-01/fulfillmentOrders/preview",
                Some("fulfillmentOutbound_2020-07-01.getFulfillmentPreview"),
            ),
            (
                "GET",
                "/fba/outbound/2020-07-01/fulfillmentOrders/preview",
                Some("fulfillmentOutbound_2020-07-01.getFulfillmentOrder"),
            ),
            (
                "POST",
                "/tokens/2021-03-01/restrictedDataToken",
                Some("tokens_2021-03-01.createRestrictedDataToken"),
            ),
            (
                "GET",
                "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.a%2Fb",
                Some("reports_2021-06-30.getReportDocument"),
            ),
            ("DELETE", "/orders/v0/orders", None),
            ("GET", "/orders/v0", None),
            ("GET", "/nothing/here", None),
            ("GET", "/", None),
            ("GET", "/orders/v0/orders//address", None),
        ];
        for (m, p, want) in cases {
            assert_eq!(find(m, p).as_deref(), want, "{m} {p}");
        }
    }

    /// Turns a template into a concrete path, every `{param}` replaced by `id`.
    fn instantiate(template: &str, id: &str) -> String {
        template
            .split('/')
            .map(|s| if s.starts_with('{') { id } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_template_matches_its_own_operation_with_odd_ids() {
        let ids = [
            "902-3159896-1390916",
            "amzn1.spdoc.1.4.na.x",
            "SKU%2FWITH%2FSLASHES",
            "red+shirt",
            "B0C1EXAMPL",
            "%E2%82%AC-euro",
        ];
        for op in cat().operations() {
            for id in ids {
                let path = instantiate(&op.template, id);
                let got = cat().find(&op.method, &path).map(Operation::qualified);
                assert_eq!(got, Some(op.qualified()), "{} {path}", op.method);
                let trailing = format!("{path}/");
                let got = cat().find(&op.method, &trailing).map(Operation::qualified);
                assert_eq!(got, Some(op.qualified()), "{} {trailing}", op.method);
            }
        }
    }

    #[test]
    fn no_two_templates_of_one_method_can_match_the_same_path() {
        let ops = cat().operations();
        let segs = |t: &str| segments(t).map(String::from).collect::<Vec<_>>();
        for (i, a) in ops.iter().enumerate() {
            for b in &ops[i + 1..] {
                if a.method != b.method {
                    continue;
                }
                let (sa, sb) = (segs(&a.template), segs(&b.template));
                let overlap = sa.len() == sb.len()
                    && sa
                        .iter()
                        .zip(&sb)
                        .all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'));
                assert!(
                    !overlap,
                    "{} {} and {} are ambiguous",
                    a.method, a.template, b.template
                );
            }
        }
    }

    #[test]
    fn overlay_kinds() {
        let op = cat().by_qualified("ordersV0", "getOrderAddress").unwrap();
        assert!(matches!(&op.auth, AuthKind::Rdt(s) if s.generic && s.elements.is_empty()));
        let op = cat().by_qualified("ordersV0", "getOrder").unwrap();
        let AuthKind::Rdt(spec) = &op.auth else {
            panic!("getOrder is restricted")
        };
        assert_eq!(
            spec.elements,
            ["buyerInfo", "shippingAddress", "buyerTaxInformation"]
        );
        assert_eq!(spec.default_elements, ["buyerInfo", "shippingAddress"]);
        let op = cat()
            .by_qualified("notifications", "getDestinations")
            .unwrap();
        assert_eq!(
            op.auth,
            AuthKind::Grantless {
                scope: "sellingpartnerapi::notifications".into()
            }
        );
        let op = cat()
            .by_qualified("reports_2021-06-30", "getReportDocument")
            .unwrap();
        assert_eq!(op.auth, AuthKind::RdtConditional);
    }

    #[test]
    fn nearest_name_suggestions() {
        assert_eq!(cat().nearest("getOrdres").as_deref(), Some("getOrders"));
        assert_eq!(
            cat().nearest("getCatalogItems").as_deref(),
            Some("getCatalogItem")
        );
    }
}
